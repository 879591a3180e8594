"""`StoreView`: the public view of a `TieredKVStore` that attention reads (decode_attention.py,
rounds.py, working_set.py): chunk counts and residency, the sinks + window buffer, the GPU pool,
the block-table lookup, and pinning chunks for one attention call. A mixin of the store (it reads
the store's own manager, pools, edges and transfer engine); nothing outside the store needs them.
"""

from __future__ import annotations

import torch

__all__ = ["StoreView"]


class StoreView:
    """Methods of `TieredKVStore` (see the module doc)."""

    def n_chunks(self, layer: int) -> int:
        """Body chunks of `layer`."""
        return self._mgr.n_chunks(layer)

    def slot_budget(self, layer: int) -> int:
        """GPU slots of `layer`: the most chunks one attention round can hold."""
        return self._mgr.budgets[layer]

    def all_resident(self, layer: int) -> bool:
        """Every body chunk of `layer` has a GPU copy."""
        return self._mgr.all_resident(layer)

    def is_resident(self, layer: int, j: int) -> bool:
        return self._mgr.gpu_slot(layer, j) is not None

    def version(self, layer: int) -> int:
        """Moves whenever `layer`'s resident chunks change (added, evicted, truncated)."""
        return self._mgr.version(layer)

    @property
    def pool(self):
        """The GPU pool (`GpuPool`: k_pool / v_pool views, gathers by global slot)."""
        return self._gpu

    def edge(self, layer: int) -> torch.Tensor:
        """`layer`'s sinks + window buffer, [2, R, S + W + C, D]: sinks at [:S], the window at
        [S : S + window_len]; a layer with body chunks has all S sinks, so [:S + w] is contiguous."""
        return self._edge[layer]

    def lookup(self, layer: int, ids: torch.Tensor) -> torch.Tensor:
        """Global pool slots [R, k] of resident chunk ids [R, k] (long, on the device), through the
        block table: no host sync. Copies into the layer's slots are waited for."""
        self._xfer.ready(layer)
        return self._table.slots(layer, self._mgr, ids)

    def chunk_slots(self, layer: int) -> torch.Tensor:
        """The layer's chunk -> global pool slot map [>= n_chunks] (long, on the device; -1 = no GPU
        copy) through the block table: what the token-gather kernel reads. Copies are waited for."""
        self._xfer.ready(layer)
        return self._table.row(layer, self._mgr)

    def pin(self, layer: int, chunks: list[int]) -> torch.Tensor:
        """Make `chunks` resident and pinned until `done`; their global slots, int64 [n]."""
        return self._fetch(layer, chunks)

    def done(self, layer: int, pinned: bool, hits: int = 0) -> None:
        """An attention call over `layer` finished: its slots may be overwritten again; pinned
        chunks are released; hits: (row, unit) reads to count when nothing had to be fetched."""
        self._xfer.mark_used(layer)
        if pinned:
            self._mgr.release(layer)
        elif hits:
            self._mgr.note_hits(hits)
