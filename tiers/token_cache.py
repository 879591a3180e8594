"""`TokenCache`: the GPU hot set of token selections — single (KV head, token) rows, not chunks.

A `token` selection picks tokens per KV head, so its picks land about one per chunk: a step touches
~one chunk per selected token and head (bench/results/chunk-union-smollm2.md), and a hot set of chunk
slots sized for the budget (what the memory plan gives) cannot hold a step's chunks. Here each layer
owns N row slots shared by its rows (KV heads):

    kv[layer]:    [2, N, D]   k and v of the token each slot holds
    owner[layer]: [N + 1]     key = row * KEY + body position, -1 = empty (entry N: a scratch entry
                              that writes of non-misses go to, so no write needs a host-side mask)
    stamp[layer]: [N + 1]     the layer's step at which the slot was last read (its LRU clock)

A step (`lookup`, then `admit` for what it missed) finds each selected key among the owners by a
sort and a binary search on the device (memory O(N), nothing per context token: at a million tokens
a map per token would outgrow the hot set itself), stamps the hits, and gives each miss the least
recently read slot that no hit of the step holds. That always exists while the step's valid picks
number at most N (the caller checks). The slots of the misses are then filled by the caller (the
store, from the tiers) with `write`. Rows share a layer's slots, so adaptive per-head budgets (a
head taking more than its share) fit as long as the layer's total does. Layers do not share: a step
visits the layers in a cycle, and least-recently-used over a cycle would evict exactly what comes next.

A slot's bytes never change while it holds its key (KV is immutable), so a slot id stays right for
as long as its owner does; `epoch(layer)` moves whenever a slot of the layer changes owner.
"""

from __future__ import annotations

import torch

__all__ = ["TokenCache", "KEY"]

KEY = 1 << 40  # row * KEY + position: positions stay below 2^40, rows below 2^22


class TokenCache:
    """`slots` row slots per layer for `n_layers` layers of KV rows [head_dim] in `dtype` on `device`."""

    def __init__(self, n_layers: int, slots: int, head_dim: int, dtype, device):
        if slots < 1:
            raise ValueError(f"a token cache needs at least one slot per layer, got {slots}")
        self.n_layers, self.slots = n_layers, slots
        self.device = torch.device(device)
        self.kv = torch.zeros(n_layers, 2, slots, head_dim, dtype=dtype, device=self.device)
        self.owner = torch.full((n_layers, slots + 1), -1, dtype=torch.long, device=self.device)
        self.stamp = torch.zeros(n_layers, slots + 1, dtype=torch.long, device=self.device)
        self._clock = [0] * n_layers
        self._epoch = [0] * n_layers
        self._ident: torch.Tensor | None = None  # slot -> slot, the kernel's "chunk -> slot" map
        self.counters = {"token_hits": 0, "token_misses": 0, "token_evictions": 0}

    def epoch(self, layer: int) -> int:
        """Moves whenever a slot of `layer` changes owner (admit, forget)."""
        return self._epoch[layer]

    @staticmethod
    def keys(select: torch.Tensor) -> torch.Tensor:
        """The cache keys of body positions select [R, k] (row r's picks): int64 [R, k]."""
        rows = torch.arange(select.shape[0], device=select.device).unsqueeze(1)
        return rows * KEY + select

    def lookup(self, layer: int, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot, hit) of keys [R, k]: slot long [R, k] (meaningless where not hit), hit bool [R, k].
        Stamps the hits as read now. Device only: no host sync."""
        self._clock[layer] += 1
        owner = self.owner[layer, : self.slots]
        sorted_keys, order = owner.sort()
        flat = keys.reshape(-1)
        pos = torch.searchsorted(sorted_keys, flat).clamp_(max=self.slots - 1)
        hit = sorted_keys.index_select(0, pos) == flat
        slot = order.index_select(0, pos)
        scratch = torch.full_like(slot, self.slots)
        self.stamp[layer].scatter_(0, torch.where(hit, slot, scratch), self._clock[layer])
        return slot.view(keys.shape), hit.view(keys.shape)

    def admit(self, layer: int, keys: torch.Tensor, miss: torch.Tensor, n_miss: int) -> torch.Tensor:
        """Give each of the n_miss keys [R, k] marked in miss [R, k] (distinct, none held; n_miss the
        host's count of them) a slot: the least recently read ones that no hit of this step holds.
        Returns the slots in the row-major order of the misses, long [n_miss]; the caller writes their
        bytes (`write`). Needs n_miss + the step's distinct hits <= slots."""
        if n_miss == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        if n_miss > self.slots:
            raise ValueError(f"layer {layer}: {n_miss} misses for {self.slots} token slots")
        stamp, owner = self.stamp[layer], self.owner[layer]
        victims = torch.topk(stamp[: self.slots], n_miss, largest=False, sorted=False).indices
        # victims held a key (an eviction) unless empty; the hits were stamped now, the newest
        self.counters["token_evictions"] += int((owner.index_select(0, victims) >= 0).sum())
        self.counters["token_misses"] += n_miss
        owner.index_copy_(0, victims, keys.reshape(-1)[miss.reshape(-1)])
        stamp.index_fill_(0, victims, self._clock[layer])
        self._epoch[layer] += 1
        return victims

    def write(self, layer: int, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Store rows [2, n, D] (k, v; any device) in slots long [n] of `layer`."""
        self.kv[layer].index_copy_(1, slots, rows.to(self.device, self.kv.dtype))

    def forget(self, layer: int, first: int = 0) -> None:
        """Drop `layer`'s rows of body positions >= first (a truncated or failed append)."""
        owner = self.owner[layer, : self.slots]
        gone = (owner >= 0) & (owner % KEY >= first)
        owner.masked_fill_(gone, -1)
        self.stamp[layer, : self.slots].masked_fill_(gone, 0)
        self._epoch[layer] += 1

    def gather(self, layer: int, slots: torch.Tensor) -> torch.Tensor:
        """k, v of slots [R, k]: [2, R, k, D] (the CPU step's gather)."""
        r, k = slots.shape
        return self.kv[layer].index_select(1, slots.reshape(-1)).view(2, r, k, -1)

    def pool_views(self, layer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`layer`'s slots as the token-gather kernel's pool: k, v [N, rows, 1, D] (every row sees
        every slot: row stride 0) and the identity slot map [N] — the kernel then reads slot t of
        row r where it would read token t's chunk."""
        if self._ident is None:
            self._ident = torch.arange(self.slots, dtype=torch.long, device=self.device)
        k, v = self.kv[layer]
        d = k.shape[-1]
        shape, stride = (self.slots, rows, 1, d), (d, 0, d, 1)
        return k.as_strided(shape, stride), v.as_strided(shape, stride), self._ident

    def held(self, layer: int) -> int:
        """Slots of `layer` holding a row now (a host sync: stats and tests only)."""
        return int((self.owner[layer, : self.slots] >= 0).sum())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.kv, self.owner, self.stamp))
