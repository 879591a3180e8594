"""`snapkv` (SnapKV, baseline): static — each chunk's score is the attention mass the prompt's last
queries paid it (summed over the query group), measured at prefill; chunks decoded later are always
kept (SnapKV keeps every generated token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..mass_scores import MassScores
from ..policy import Geometry, SelectionPolicy

__all__ = ["SnapKV", "KEEP"]

KEEP = 1e30  # score of a decoded chunk: kept before any prompt chunk


@dataclass(frozen=True)
class SnapKV(SelectionPolicy):
    name: ClassVar[str] = "snapkv"
    observes: ClassVar[bool] = True
    summary: ClassVar[str] = "baseline (SnapKV): the prompt's last queries' attention, static"

    def start(self, geometry: Geometry) -> "_Static":
        return _Static(self, geometry)

    def summary_bytes(self, head_dim: int, chunk: int, kv_itemsize: int) -> float:
        return 5 / chunk


class _Static(MassScores):
    def add(self, layer, j, keys):
        n = keys.shape[1] // self.geometry.chunk
        score, _ = self.grown(layer, j + n)
        score[:, :, j : j + n] = KEEP
