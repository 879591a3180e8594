"""`bound` (ours): a low-rank box per chunk. On the layer's `KeyBasis` P [D, r], per chunk and KV
head the min and max of P^T k per basis direction and the largest residual norm ||k - P P^T k||:

    sum_i max(q~_i lo_i, q~_i hi_i) + ||q - P q~|| max||k_res||  >=  max_k q.k

for any orthonormal P (a good P makes it tight). Unlike a mean key, an outlier key that holds a
needle widens its chunk's box and raises the bound. (2r + 1) * 4 / C bytes per token and KV head
plus the basis; scored by `kernels.chunk_scores` (Triton on CUDA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import ConfigError
from ...kernels.dispatch import chunk_scores
from ..basis import KeyBasis
from ..chunk_summary import ChunkSummary
from ..policy import Geometry, SelectionPolicy

__all__ = ["Bound"]


@dataclass(frozen=True)
class Bound(SelectionPolicy):
    """rank: r of the basis (at most head_dim)."""

    name: ClassVar[str] = "bound"
    summary: ClassVar[str] = "ours: low-rank upper bound per chunk (a box)"
    rank: int = 16

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"bound: rank must be a positive integer, got {self.rank!r}")

    def start(self, geometry: Geometry) -> "_Boxes":
        return _Boxes(self, geometry)

    def summary_bytes(self, head_dim: int, chunk: int, kv_itemsize: int) -> float:
        return (2 * min(self.rank, head_dim) + 1) * 4 / chunk


class _Boxes(ChunkSummary):
    def __init__(self, policy: Bound, geometry: Geometry):
        self.rank = min(policy.rank, geometry.head_dim)
        g = geometry
        self.basis = KeyBasis(g.n_layers, g.batch, g.n_kv, g.head_dim, self.rank, g.device)
        super().__init__(policy, geometry)

    def buffers(self, geometry):
        return {"lo": self.rank, "hi": self.rank, "res": 0}

    def before_chunks(self, layer, keys):
        self.basis.ensure(layer, keys)

    def add(self, layer, j, keys):
        if not self.basis.has[layer]:  # no before_chunks (a store fed chunks directly)
            self.basis.ensure(layer, keys)
        super().add(layer, j, keys)

    def summarize(self, layer, kf):
        proj, resid = self.basis.project(layer, kf)  # [B, Hkv, n, C, r], [B, Hkv, n, C]
        return {"lo": proj.amin(3), "hi": proj.amax(3), "res": resid.amax(-1)}

    def scores(self, layer, q, n_chunks, k, scaling, rows_k):
        m = n_chunks
        return chunk_scores(q, self.view("lo", layer, m), self.view("hi", layer, m),
                            basis=self.basis.basis[layer], res_max=self.view("res", layer, m))  # fmt: skip

    def state_dict(self):
        return self.basis.state_dict()

    def load_state_dict(self, state):
        self.basis.load_state_dict(state)

    @property
    def nbytes(self):
        return super().nbytes + self.basis.nbytes
