"""`BlockTable`: the device mirror of the TierManager's chunk -> GPU slot map, what sparse kernels read.

The manager (placement) keeps the map as Python dicts; a decode step that selected chunks per KV head
([R, k] ids on the device) needs their global pool slots as a tensor without a round trip to Python.
`slots(layer, ids)` looks them up in a per-layer row `[capacity]` int64 (global slot, -1 = no GPU
copy), rebuilt from the manager only when its `version(layer)` moved (a chunk joined the hot set,
was evicted or truncated) — once per C decoded tokens; a fetch's misses and evictions are patched in
(`patch`): at 1M tokens a rebuild of the row costs ~3 ms a layer step on a CPU, the patch ~0.1.
"""

from __future__ import annotations

import torch

__all__ = ["BlockTable"]


class BlockTable:
    """Per-layer chunk -> global slot rows over `base` (GpuPool.base: each layer's first slot)."""

    def __init__(self, base: list[int], device, capacity: int = 64):
        self.base = list(base)
        self.device = torch.device(device)
        self._rows = torch.full((len(base), max(1, capacity)), -1, dtype=torch.long, device=self.device)
        self._seen = [-1] * len(base)  # manager version each row mirrors (-1: never built)

    def slots(self, layer: int, mgr, ids: torch.Tensor) -> torch.Tensor:
        """Global slots of chunk ids [R, k] (long, on the device) of `layer`: [R, k], -1 = not resident."""
        return self.row(layer, mgr).index_select(0, ids.reshape(-1)).view(ids.shape)

    def row(self, layer: int, mgr) -> torch.Tensor:
        """The whole chunk -> global slot map of `layer`: [capacity >= n_chunks] long, -1 = not resident
        (what a kernel that maps token ids to slots itself reads)."""
        if self._seen[layer] != mgr.version(layer):
            self._rebuild(layer, mgr)
        return self._rows[layer]

    def patch(self, layer: int, seen: int, mgr, plan) -> None:
        """`plan` (a FetchPlan of `layer`) moved the manager from version `seen`: when the row mirrored
        `seen`, write its evictions (-1) and misses (their slots) and mirror the new version."""
        if self._seen[layer] != seen or seen == mgr.version(layer):
            return
        row = self._rows[layer]
        if plan.misses and max(m.chunk for m in plan.misses) >= row.shape[0]:
            return  # a chunk past the row: the lazy rebuild grows it
        if plan.evicted:
            row[torch.tensor(plan.evicted, dtype=torch.long, device=self.device)] = -1
        if plan.misses:
            chunks = torch.tensor([m.chunk for m in plan.misses], dtype=torch.long, device=self.device)
            row[chunks] = torch.tensor([m.slot + self.base[layer] for m in plan.misses], dtype=torch.long,
                                       device=self.device)  # fmt: skip
        self._seen[layer] = mgr.version(layer)

    def _rebuild(self, layer: int, mgr) -> None:
        resident = mgr.resident(layer)  # chunk -> layer-local slot
        need = mgr.n_chunks(layer)
        if need > self._rows.shape[1]:  # grow by doubling: amortised, like the abstracts
            grown = torch.full((self._rows.shape[0], max(need, 2 * self._rows.shape[1])), -1,
                               dtype=torch.long, device=self.device)  # fmt: skip
            grown[:, : self._rows.shape[1]] = self._rows
            self._rows = grown
        row = self._rows[layer]
        row.fill_(-1)
        if resident:
            chunks = torch.tensor(list(resident), dtype=torch.long)
            slots = torch.tensor(list(resident.values()), dtype=torch.long) + self.base[layer]
            row[chunks.to(self.device)] = slots.to(self.device)
        self._seen[layer] = mgr.version(layer)
