"""`ChunkSummary`: the state of a policy that keeps a few numbers per body chunk and KV head
(`bound`, `quest`, `landmark`): named buffers [L, B, Hkv, capacity, width] (or [L, B, Hkv, capacity]
for width 0) fp32 on the device, preallocated from the context and doubled when full (the decode
loop does not allocate per step). A subclass names its buffers in `buffers(geometry)` and fills
them in `summarize`."""

from __future__ import annotations

import torch

from .policy import Geometry, PolicyState, SelectionPolicy

__all__ = ["ChunkSummary"]


class ChunkSummary(PolicyState):
    """Per-chunk buffers `self.buf[name]`; `summarize(layer, kf)` returns {name: [B, Hkv, n, width]}
    (or [B, Hkv, n]) for the chunks kf [B, Hkv, n, C, D] (fp32)."""

    def __init__(self, policy: SelectionPolicy, geometry: Geometry):
        super().__init__(policy, geometry)
        self.widths = self.buffers(geometry)
        self.buf: dict[str, torch.Tensor] = {}
        self.capacity = 0
        self._alloc(max(1, geometry.capacity))

    def buffers(self, geometry: Geometry) -> dict[str, int]:
        raise NotImplementedError

    def summarize(self, layer: int, kf: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _alloc(self, capacity: int) -> None:
        g = self.geometry
        for name, width in self.widths.items():
            shape = (g.n_layers, g.batch, g.n_kv, capacity) + ((width,) if width else ())
            new = torch.zeros(shape, device=g.device)
            if self.capacity:
                new[:, :, :, : self.capacity] = self.buf[name]
            self.buf[name] = new
        self.capacity = capacity

    def add(self, layer: int, j: int, keys: torch.Tensor) -> None:
        kf = self.geometry.chunked(keys)  # [B, Hkv, n, C, D]
        n = kf.shape[2]
        if j + n > self.capacity:
            self._alloc(max(j + n, 2 * self.capacity))
        for name, value in self.summarize(layer, kf).items():
            self.buf[name][layer, :, :, j : j + n] = value

    def view(self, name: str, layer: int, m: int) -> torch.Tensor:
        """The layer's first m chunks of buffer `name`."""
        return self.buf[name][layer, :, :, :m]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buf.values())
