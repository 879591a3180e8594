"""`GpuPool`: the hot set — one preallocated tensor of chunk slots on the compute device.

    kv: [total_slots, 2, R, C, D]      (k at [:, 0], v at [:, 1])
    layer l owns the global slots [base[l], base[l] + budget[l])

One pool with per-layer offsets (rather than a tensor per layer) means a kernel needs a single base
pointer plus a block table of global slot ids (`int32 [n_selected]` per layer, or [Hkv, k] for per-head
selection) to find any chunk of any layer, and a later issue can rebalance budgets between layers
by moving offsets instead of reallocating. Nothing on the decode path allocates pool memory: the
TierManager hands out slot numbers, transfers copy into `view(layer, slot)`.

On a CPU-only machine the pool lives in host memory (the compute device); the code is the same.
"""

from __future__ import annotations

import itertools

import torch

from .layout import ChunkLayout

__all__ = ["GpuPool"]


class GpuPool:
    """Preallocated chunk slots on `device`, `budgets[l]` slots for layer l."""

    def __init__(self, layout: ChunkLayout, budgets: list[int], device: torch.device | str):
        if len(budgets) != layout.n_layers or any(b < 1 for b in budgets):
            raise ValueError(f"need one budget >= 1 per layer, got {budgets}")
        self.layout = layout
        self.budgets = list(budgets)
        self.base = [0, *itertools.accumulate(budgets)][:-1]  # first global slot of each layer
        total = sum(budgets)
        self.kv = torch.empty((total, *layout.chunk_shape), dtype=layout.dtype, device=device)
        # [2, R, 1]: (k/v t, row i)'s part of a row number of kv viewed [S*2*R, C*D]: (s*2 + t)*R + i
        r = layout.rows
        self._row_off = torch.arange(2, device=device)[:, None, None] * r + torch.arange(r, device=device)[:, None]

    @property
    def k_pool(self) -> torch.Tensor:
        """Keys of every slot, [total_slots, R, C, D] (a view; v_pool shares its strides): with
        batch 1 this is the `k_pool` [S, Hkv, C, D] of kernels/sparse_decode.py."""
        return self.kv[:, 0]

    @property
    def v_pool(self) -> torch.Tensor:
        return self.kv[:, 1]

    def global_slot(self, layer: int, slot: int) -> int:
        """Index into `kv` of layer-local slot `slot`."""
        if not 0 <= slot < self.budgets[layer]:
            raise IndexError(f"slot {slot} out of range for layer {layer} (budget {self.budgets[layer]})")
        return self.base[layer] + slot

    def view(self, layer: int, slot: int) -> torch.Tensor:
        """Layer-local slot as a [2, R, C, D] view."""
        return self.kv[self.global_slot(layer, slot)]

    def span(self, layer: int, slot: int, n: int) -> torch.Tensor:
        """Layer-local slots slot .. slot+n-1 as one [n, 2, R, C, D] view (one copy fills them)."""
        g = self.global_slot(layer, slot)
        self.global_slot(layer, slot + n - 1)  # the last one is the layer's too
        return self.kv[g : g + n]

    def gather(self, global_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v of the given global slots laid end to end: each [R, n*C, D] for n slots.

        The torch reference for what a sparse-attention kernel reads through its block table.
        global_slots: int64 [n] on the pool's device."""
        sel = self.kv.index_select(0, global_slots)  # [n, 2, R, C, D]
        n, _, r, c, d = sel.shape
        kv = sel.permute(1, 2, 0, 3, 4).reshape(2, r, n * c, d)  # token order: slot by slot
        return kv[0], kv[1]

    def gather_rows(self, slots: torch.Tensor, parts: int = 2) -> torch.Tensor:
        """Each row's own chunks: out[t, i, j] = kv[slots[i, j], t, i] flattened to [C*D], for
        t < parts (1: keys only, 2: keys and values); slots [R, k] int64 global slots -> [parts, R,
        k, C*D]. One index_select of contiguous rows of kv viewed [S*2*R, C*D]: on CPU several times
        faster than advanced indexing over the two non-adjacent dims (slot, row) and a permute."""
        lay = self.layout
        rows = slots.unsqueeze(0) * (2 * lay.rows) + self._row_off[:parts]  # [parts, R, k]
        flat = self.kv.view(-1, lay.chunk * lay.head_dim)
        return flat.index_select(0, rows.view(-1)).view(parts, lay.rows, slots.shape[1], -1)

    def gather_tokens(self, slots: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Each row's own tokens: out[t, i, j] = kv[slots[i, j], t, i, offsets[i, j]], [D], for k and
        v; slots [R, k] int64 global slots, offsets [R, k] token within the chunk -> [2, R, k, D].
        One index_select of kv viewed [S*2*R*C, D] (as `gather_rows`, one token per index)."""
        lay = self.layout
        rows = (slots.unsqueeze(0) * (2 * lay.rows) + self._row_off) * lay.chunk + offsets  # [2, R, k]
        flat = self.kv.view(-1, lay.head_dim)
        return flat.index_select(0, rows.view(-1)).view(2, lay.rows, slots.shape[1], lay.head_dim)

    def read_tokens(self, slots: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """k, v of single tokens: out[t, i] = kv[slots[i], t, rows[i], offsets[i]]; all long [n] on the
        pool's device (global slots) -> [2, n, D] (a token cache's fill from resident chunks)."""
        lay = self.layout
        flat = ((slots * 2 + torch.arange(2, device=slots.device)[:, None]) * lay.rows + rows) * lay.chunk + offsets
        return self.kv.view(-1, lay.head_dim).index_select(0, flat.view(-1)).view(2, -1, lay.head_dim)

    @property
    def nbytes(self) -> int:
        """Bytes preallocated for the pool."""
        return self.kv.numel() * self.kv.element_size()

    def close(self) -> None:
        self.kv = self.kv.new_empty((0, *self.layout.chunk_shape))
