"""`ChunkLayout`: how one layer's tokens are cut into sinks, a chunked body and a recent window.

Positions of a layer holding n tokens (S sinks, C tokens per chunk, W window):

    [0, S)                      sinks: always on the compute device
    [S + j*C, S + (j+1)*C)      body chunk j, j < m(n): placed by the TierManager
    [S + m(n)*C, n)             window: always on the compute device, W <= length < W + C
                                (shorter only while the layer holds fewer than S + W tokens)

m(n) = max(0, (n - S - W) // C) is a function of n alone (the *canonical* layout): appending the
same tokens in any split, or truncating a longer layer to n, gives the same cut. Decode fills the
window; once it holds W + C tokens its oldest C join the body as one chunk.

A chunk's bytes are one contiguous tensor [2, R, C, D] (k at index 0, v at 1; R = batch * Hkv rows),
the unit every tier stores and every transfer moves in a single copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ChunkLayout"]


@dataclass(frozen=True)
class ChunkLayout:
    """Geometry shared by the pools, the disk store, the manager and the store.

    n_layers: decoder layers; rows: batch * KV heads (R); chunk: tokens per chunk (C);
    head_dim: D; dtype: KV dtype; sinks: S leading tokens kept on device; window: W recent tokens.
    """

    n_layers: int
    rows: int
    chunk: int
    head_dim: int
    dtype: torch.dtype
    sinks: int = 4
    window: int = 64

    def __post_init__(self):
        for name in ("n_layers", "rows", "chunk", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("sinks", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"dtype must be a torch.dtype, got {self.dtype!r}")

    @property
    def chunk_shape(self) -> tuple[int, int, int, int]:
        """Shape of one chunk's k+v tensor: [2, R, C, D]."""
        return (2, self.rows, self.chunk, self.head_dim)

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one chunk (k and v, all rows)."""
        return 2 * self.rows * self.chunk * self.head_dim * self.itemsize

    @property
    def token_bytes(self) -> int:
        """Bytes of one token of one layer (k and v, all rows)."""
        return 2 * self.rows * self.head_dim * self.itemsize

    @property
    def edge_capacity(self) -> int:
        """Tokens the per-layer device buffer for sinks + window must hold: S + W + C - 1 at most."""
        return self.sinks + self.window + self.chunk

    def body_chunks(self, n: int) -> int:
        """m(n): body chunks of a layer holding n tokens (canonical layout)."""
        return max(0, (n - self.sinks - self.window) // self.chunk)

    def sink_len(self, n: int) -> int:
        return min(n, self.sinks)

    def window_len(self, n: int) -> int:
        """Tokens in the window of a layer holding n tokens."""
        return max(0, n - self.sinks - self.body_chunks(n) * self.chunk)

    def chunk_start(self, j: int) -> int:
        """Position of chunk j's first token."""
        return self.sinks + j * self.chunk
