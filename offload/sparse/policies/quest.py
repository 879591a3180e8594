"""`quest` (Quest, baseline): per-chunk, per-channel min and max of the keys; the score
sum_d max(q_d min_d, q_d max_d) bounds the chunk's best q.k. 2D * 4 / C bytes per token and KV head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...kernels.dispatch import chunk_scores
from ..chunk_summary import ChunkSummary
from ..policy import Geometry, SelectionPolicy

__all__ = ["Quest"]


@dataclass(frozen=True)
class Quest(SelectionPolicy):
    name: ClassVar[str] = "quest"
    summary: ClassVar[str] = "baseline (Quest): per-channel key min/max per chunk"

    def start(self, geometry: Geometry) -> "_MinMax":
        return _MinMax(self, geometry)

    def summary_bytes(self, head_dim: int, chunk: int, kv_itemsize: int) -> float:
        return 2 * head_dim * 4 / chunk


class _MinMax(ChunkSummary):
    def buffers(self, geometry):
        return {"lo": geometry.head_dim, "hi": geometry.head_dim}

    def summarize(self, layer, kf):
        return {"lo": kf.amin(3), "hi": kf.amax(3)}

    def scores(self, layer, q, n_chunks, k, scaling, rows_k):
        return chunk_scores(q, self.view("lo", layer, n_chunks), self.view("hi", layer, n_chunks))
