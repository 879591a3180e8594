"""`TokenCache`: the GPU hot set of token selections — single (KV head, token) rows, not chunks.

A `token` selection picks tokens per KV head, so its picks land about one per chunk: a step touches
~one chunk per selected token and head (bench/results/chunk-union-smollm2.md), and a hot set of chunk
slots sized for the budget (what the memory plan gives) cannot hold a step's chunks. Here each layer
owns a range of row slots, shared by its rows (KV heads):

    kv:    [2, T, D]   k and v of the row each slot holds (T: every layer's slots)
    owner: [T + 1]     key = row * KEY + body position, -1 = empty (entry T: a scratch entry that
                       writes of non-misses go to, so no write needs a host-side mask)
    stamp: [T + 1]     the step at which the slot was last read (the LRU clock)

A step (`lookup`, then `admit` for what it missed) finds each selected key on the device — on CUDA
among the layer's owners by a sort and a binary search (nothing per context token: at a million
tokens a map per token would outgrow the hot set itself), on a CPU (index "map") through a map per
(row, position), where memory is the host's and a sort of a million owners costs 140 ms — stamps the
hits, and gives each miss the least recently read slot that no hit of the step holds. That exists
while the step's valid picks number at most the layer's slots (the caller checks, `fit`); the
caller (the store, from the tiers) fills the misses' slots with `write`. Rows share a layer's
slots, so adaptive per-head budgets fit as long as the layer's total does. Layers split the slots by
the budget plan's picks for every layer (`expect`), and anew when one picks more than its range
(`fit`): the adaptive split moves budget between layers under a fixed total, the plan's hot set.
Layers do not evict each other's rows: a search stays within one layer's range.

A slot's bytes never change while it holds its key (KV is immutable), so a slot id stays right for
as long as its owner does; `epoch(layer)` moves whenever a slot of the layer changes owner.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["TokenCache", "KEY"]

KEY = 1 << 40  # row * KEY + position: positions stay below 2^40, rows below 2^22


class TokenCache:
    """`slots` row slots per layer (on average) for `n_layers` layers of KV rows [head_dim] in
    `dtype` on `device`; a layer's share moves to what its steps pick (`fit`)."""

    def __init__(self, n_layers: int, slots: int, head_dim: int, dtype, device, index: str | None = None):
        if slots < 1:
            raise ValueError(f"a token cache needs at least one slot per layer, got {slots}")
        self.index = index or ("sort" if torch.device(device).type == "cuda" else "map")
        if self.index not in ("sort", "map"):
            raise ValueError(f"index must be 'sort' or 'map', got {index!r}")
        self._map: list[torch.Tensor | None] = [None] * n_layers  # index "map": [R, >= body] slot or -1
        self.n_layers, self.total = n_layers, slots * n_layers
        self.device = torch.device(device)
        self.kv = torch.zeros(2, self.total, head_dim, dtype=dtype, device=self.device)
        # entry `total`: the scratch entry that writes of non-misses go to
        self.owner = torch.full((self.total + 1,), -1, dtype=torch.long, device=self.device)
        self.stamp = torch.zeros(self.total + 1, dtype=torch.long, device=self.device)
        self._clock = 0
        self._epoch = [0] * n_layers
        self._need: list[int | None] = [None] * n_layers  # the latest step's picks, per layer
        self._split([slots] * n_layers)
        self._ident: torch.Tensor | None = None  # slot -> slot, the kernel's "chunk -> slot" map
        self._counts = {"token_hits": 0, "token_misses": 0, "token_resplits": 0, "token_ahead": 0}
        # counted where they happen (no host wait): evictions; hits on rows fetched ahead, not yet read
        self._on_device = torch.zeros(2, dtype=torch.long, device=self.device)  # [evictions, ahead hits]
        self.ahead = torch.zeros(self.total + 1, dtype=torch.bool, device=self.device)  # fetched ahead, unread
        self._any_ahead = False  # a row was ever fetched ahead (else lookups skip that count)

    @property
    def counters(self) -> dict:
        """Rows read from the cache, fetched into it (on demand; ahead of the step, `admit(ahead=)`),
        evicted from it; rows fetched ahead that a step then read; new splits (a host sync: stats)."""
        evicted, ahead_hits = self._on_device.tolist()
        return {**self._counts, "token_evictions": evicted, "token_ahead_hits": ahead_hits}

    def note_hits(self, n: int) -> None:
        """Count n picks a step found held."""
        self._counts["token_hits"] += n

    def _split(self, sizes: list[int]) -> None:
        self.base = [0, *itertools.accumulate(sizes)][:-1]
        self.size = list(sizes)

    def slots(self, layer: int) -> int:
        """Slots `layer` holds now."""
        return self.size[layer]

    def room(self, layer: int) -> int:
        """Slots of `layer` beyond what its latest step picked: rows a guess may take without
        evicting what that step read."""
        return self.size[layer] - (self._need[layer] or 0)

    def fit(self, layer: int, need: int) -> bool:
        """Note that `layer`'s step picks `need` rows; when its slots are fewer, split the slots anew —
        every layer its latest step's picks (a layer not seen yet: none), the rest evenly, each at least
        one — and forget every row (the layers' places moved). False when the picks of all layers
        outnumber the slots (the step cannot be held)."""
        self._need[layer] = need
        return need <= self.size[layer] or self._resplit(layer)

    def expect(self, needs: list[int]) -> None:
        """Every layer's coming picks (the budget plan's): split the slots anew now, while nothing
        is lost (the first step), where one of them outgrows its range."""
        self._need = list(needs)
        if any(n > s for n, s in zip(needs, self.size)):
            self._resplit(max(range(self.n_layers), key=lambda i: needs[i] - self.size[i]))

    def _resplit(self, layer: int) -> bool:
        known = [n or 0 for n in self._need]
        spare = self.total - sum(known)
        sizes = [max(1, n + spare // self.n_layers) for n in known]
        if spare < 0 or sum(sizes) > self.total:
            return False
        sizes[layer] += self.total - sum(sizes)  # the remainder: the layer that asked
        self._split(sizes)
        self.owner.fill_(-1)
        self.stamp.zero_()
        self.ahead.zero_()
        for m in self._map:
            if m is not None:
                m.fill_(-1)
        self._epoch = [e + 1 for e in self._epoch]
        self._counts["token_resplits"] += 1
        return True

    def epoch(self, layer: int) -> int:
        """Moves whenever a slot of `layer` changes owner (admit, forget, a new split)."""
        return self._epoch[layer]

    @staticmethod
    def keys(select: torch.Tensor) -> torch.Tensor:
        """The cache keys of body positions select [R, k] (row r's picks): int64 [R, k]."""
        rows = torch.arange(select.shape[0], device=select.device).unsqueeze(1)
        return rows * KEY + select

    def _range(self, layer: int) -> slice:
        return slice(self.base[layer], self.base[layer] + self.size[layer])

    def lookup(self, layer: int, keys: torch.Tensor, n_body: int, guess: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot, hit) of keys [R, k] of body positions < n_body: slot long [R, k] (meaningless where
        not hit), hit bool [R, k]. Stamps the hits as read now (guess: the keys are a lookahead's
        guess, not a step's reads: rows fetched ahead stay unread). Device only: no host sync."""
        self._clock += 1
        flat = keys.reshape(-1)
        if self.index == "map":  # a map per (row, position): one read, memory ~ the context
            where = self._grown(layer, keys.shape[0], n_body)
            slot = where.view(-1).index_select(0, self._flat(flat, where.shape[1])).long()
            hit = slot >= 0
            slot = slot.clamp_(min=0)
        else:  # the owners sorted, a binary search: memory ~ the cache
            sorted_keys, order = self.owner[self._range(layer)].sort()
            pos = torch.searchsorted(sorted_keys, flat).clamp_(max=self.size[layer] - 1)
            hit = sorted_keys.index_select(0, pos) == flat
            slot = order.index_select(0, pos) + self.base[layer]
        read = torch.where(hit, slot, torch.full_like(slot, self.total))  # misses: the scratch entry
        self.stamp.scatter_(0, read, self._clock)
        if self._any_ahead and not guess:
            ahead = self.ahead[self._range(layer)]
            unread = ahead.sum()  # rows fetched ahead that no step read yet (a pick may repeat: padding)
            self.ahead.index_fill_(0, read, False)
            self._on_device[1] += unread - ahead.sum()
        return slot.view(keys.shape), hit.view(keys.shape)

    def admit(self, layer: int, keys: torch.Tensor, miss: torch.Tensor, n_miss: int, ahead: bool = False) -> torch.Tensor:
        """Give each of the n_miss keys [R, k] marked in miss [R, k] (distinct, none held; n_miss the
        host's count of them) a slot of `layer`: the least recently read ones that no hit of this step
        holds. Returns the slots in the row-major order of the misses, long [n_miss]; the caller writes
        their bytes (`write`). Needs n_miss + the step's distinct hits <= the layer's slots.
        ahead: the keys are a guess at a step to come (a lookahead's), counted apart."""
        if n_miss == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        if n_miss > self.size[layer]:
            raise ValueError(f"layer {layer}: {n_miss} misses for {self.size[layer]} token slots")
        part = self._range(layer)
        victims = torch.topk(self.stamp[part], n_miss, largest=False, sorted=False).indices + part.start
        old = self.owner.index_select(0, victims)  # the hits were stamped now, the newest: never victims
        self._on_device[0] += (old >= 0).sum()  # a victim that held a key (not an empty slot): on the device
        self._counts["token_ahead" if ahead else "token_misses"] += n_miss
        if ahead or self._any_ahead:
            self.ahead.index_fill_(0, victims, ahead)
            self._any_ahead = True
        new_keys = keys.reshape(-1)[miss.reshape(-1)]
        if self.index == "map":
            where = self._map[layer]  # [R, W + 1]: the last column a scratch entry (row 0's: W)
            w = where.shape[1]
            gone = torch.where(old >= 0, self._flat(old.clamp(min=0), w), w - 1)
            flat = where.view(-1)
            flat.index_fill_(0, gone, -1)
            flat.index_copy_(0, self._flat(new_keys, w), victims.to(flat.dtype))
        self.owner.index_copy_(0, victims, new_keys)
        self.stamp.index_fill_(0, victims, self._clock)
        self._epoch[layer] += 1
        return victims

    def write(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Store rows [2, n, D] (k, v; any device) in slots long [n]."""
        self.kv.index_copy_(1, slots, rows.to(self.device, self.kv.dtype))

    def drop(self, layer: int, slots: torch.Tensor) -> None:
        """Empty `layer`'s slots long [n] (admitted, their bytes never written: a failed fetch)."""
        if self._map[layer] is not None:
            owner = self.owner.index_select(0, slots)
            w = self._map[layer].shape[1]
            self._map[layer].view(-1).index_fill_(0, torch.where(owner >= 0, self._flat(owner.clamp(min=0), w), w - 1), -1)
        self.owner.index_fill_(0, slots, -1)
        self.stamp.index_fill_(0, slots, 0)
        self.ahead.index_fill_(0, slots, False)
        self._epoch[layer] += 1

    def forget(self, layer: int, first: int = 0) -> None:
        """Drop `layer`'s rows of body positions >= first (a truncated or failed append)."""
        part = self._range(layer)
        owner = self.owner[part]
        gone = (owner >= 0) & (owner % KEY >= first)
        owner.masked_fill_(gone, -1)
        self.stamp[part].masked_fill_(gone, 0)
        self.ahead[part].masked_fill_(gone, False)
        if self._map[layer] is not None:
            self._map[layer][:, first:] = -1
        self._epoch[layer] += 1

    @staticmethod
    def _flat(keys: torch.Tensor, width: int) -> torch.Tensor:
        """Keys -> their entries in a map [R, width] viewed flat."""
        return torch.div(keys, KEY, rounding_mode="floor") * width + keys % KEY

    def _grown(self, layer: int, rows: int, n_body: int) -> torch.Tensor:
        """`layer`'s map, [rows, W + 1] with W >= n_body (grown by doubling: amortised, like the block
        table); the last column is scratch."""
        where = self._map[layer]
        if where is None or where.shape[1] <= n_body:
            width = max(64, n_body, 0 if where is None else 2 * where.shape[1]) + 1
            grown = torch.full((rows, width), -1, dtype=torch.int32, device=self.device)
            if where is not None:
                grown[:, : where.shape[1] - 1] = where[:, :-1]
            self._map[layer] = where = grown
        return where

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        """k, v of slots [R, k]: [2, R, k, D] (the CPU step's gather)."""
        r, k = slots.shape
        return self.kv.index_select(1, slots.reshape(-1)).view(2, r, k, -1)

    def pool_views(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The slots as the token-gather kernel's pool: k, v [total, rows, 1, D] (every row sees every
        slot: row stride 0) and the identity slot map [total] — the kernel then reads slot t of row r
        where it would read token t's chunk."""
        if self._ident is None:
            self._ident = torch.arange(self.total, dtype=torch.long, device=self.device)
        k, v = self.kv
        d = k.shape[-1]
        shape, stride = (self.total, rows, 1, d), (d, 0, d, 1)
        return k.as_strided(shape, stride), v.as_strided(shape, stride), self._ident

    def held(self, layer: int) -> int:
        """Slots of `layer` holding a row now (a host sync: stats and tests only)."""
        return int((self.owner[self._range(layer)] >= 0).sum())

    @property
    def nbytes(self) -> int:
        maps = [m for m in self._map if m is not None]
        return sum(t.numel() * t.element_size() for t in (self.kv, self.owner, self.stamp, *maps))
