"""`landmark` (ShadowKV-style, baseline): the chunk's mean key; score = the best q.mean over the
KV head's query group. An estimate, not a bound: an outlier key that holds a needle is averaged away.
D * 4 / C bytes per token and KV head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..chunk_summary import ChunkSummary
from ..policy import Geometry, SelectionPolicy

__all__ = ["Landmark"]


@dataclass(frozen=True)
class Landmark(SelectionPolicy):
    name: ClassVar[str] = "landmark"
    summary: ClassVar[str] = "baseline (ShadowKV): mean key per chunk"

    def start(self, geometry: Geometry) -> "_MeanKey":
        return _MeanKey(self, geometry)

    def summary_bytes(self, head_dim: int, chunk: int, kv_itemsize: int) -> float:
        return head_dim * 4 / chunk


class _MeanKey(ChunkSummary):
    def buffers(self, geometry):
        return {"mean": geometry.head_dim}

    def summarize(self, layer, kf):
        return {"mean": kf.mean(3)}

    def scores(self, layer, q, n_chunks, k, scaling, rows_k):
        b, h, d = q.shape
        n_kv = self.geometry.n_kv
        qg = q.float().reshape(b, n_kv, h // n_kv, d)
        return torch.matmul(qg, self.view("mean", layer, n_chunks).transpose(-1, -2)).amax(2)
