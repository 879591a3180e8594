"""`h2o` (H2O, baseline): accumulated attention mass, evicting. The prompt's mass as for snapkv,
then each step adds the mass every selected chunk received; a chunk not selected is evicted for
good. A chunk that leaves the window starts at the mean score of the head's live chunks (its
window-time mass is not tracked: an approximation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..mass_scores import MassScores
from ..policy import Geometry, SelectionPolicy

__all__ = ["H2O"]


@dataclass(frozen=True)
class H2O(SelectionPolicy):
    name: ClassVar[str] = "h2o"
    observes: ClassVar[bool] = True
    summary: ClassVar[str] = "baseline (H2O): accumulated attention, evicting"

    def start(self, geometry: Geometry) -> "_Accumulated":
        return _Accumulated(self, geometry)

    def summary_bytes(self, head_dim: int, chunk: int, kv_itemsize: int) -> float:
        return 5 / chunk


class _Accumulated(MassScores):
    wants_mass = True

    def add(self, layer, j, keys):
        n = keys.shape[1] // self.geometry.chunk
        score, alive = self.grown(layer, j + n)
        for i in range(j, j + n):
            live = alive[:, :, :i]
            n_live = live.sum(-1).clamp(min=1)
            score[:, :, i] = (score[:, :, :i] * live).sum(-1) / n_live
            alive[:, :, i] = True

    def scores(self, layer, q, n_chunks, k, scaling, rows_k):
        s = super().scores(layer, q, n_chunks, k, scaling, rows_k)
        if not self.observed[layer]:
            return s
        return s.masked_fill(~self.alive[layer][:, :, :n_chunks], float("-inf"))

    def chose(self, layer, idx, n_chunks):
        if not self.observed[layer]:
            return
        alive = self.alive[layer][:, :, :n_chunks]
        alive.zero_()  # evicting: what is not kept now never comes back
        alive.scatter_(2, idx, True)

    def attended(self, layer, ids, mass):
        if not self.observed[layer] or ids.numel() == 0:
            return
        g = self.geometry
        s = self.score[layer].view(g.batch * g.n_kv, -1)
        s.scatter_add_(1, ids.to(s.device), mass.to(s.device, s.dtype))
