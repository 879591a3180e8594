"""The one interface through which the engine reaches KV storage, and its simplest implementation.

The engine never touches KV tensors directly: prefill appends a layer's new tokens, decode appends one
token per layer and asks the store to attend. Tiered storage (tiers/) and sparse selection implement
the same protocol, so the engine does not change when they land.

Shapes: B batch, Hkv KV heads, H query heads (H = Hkv * groups), t new tokens, n stored tokens, D head dim.
All tensors are post-RoPE and live on the compute device when they cross this interface.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .kernels.dispatch import causal_prefill_attention

__all__ = ["KVStore", "DenseKVStore"]


@runtime_checkable
class KVStore(Protocol):
    """What the engine needs from KV storage."""

    n_layers: int

    def layer_len(self, layer: int) -> int:
        """Tokens stored for `layer`."""

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append `t >= 1` tokens to `layer`. k, v: [B, Hkv, t, D]. Prefill hands a whole layer's new
        tokens at once (t = prompt length); decode hands one token (t = 1)."""

    def read_layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored token of `layer` on the compute device: k, v [B, Hkv, n, D]. Used by the
        prefill of a later chat turn, which attends exactly over what came before."""

    def attend(
        self, layer: int, q: torch.Tensor, scaling: float, sliding_window: int | None = None
    ) -> torch.Tensor:
        """Attention of q [B, H, Lq, D] over the stored tokens of `layer` (the last Lq of which are the
        query's own, causally aligned bottom-right). Returns [B, Lq, H, D] contiguous."""

    def truncate(self, n: int) -> None:
        """Forget tokens at positions >= n in every layer (a chat rewinding to a common prefix)."""

    def stats(self) -> dict:
        """Bytes per tier and counters, for the speed line."""

    def close(self) -> None:
        """Release memory and remove any spill files."""


class DenseKVStore:
    """All KV on the compute device in per-layer buffers that grow geometrically (no per-token copy).

    Exact attention; the baseline every other store must match when its budget covers the context.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, dtype, device, batch: int = 1):
        self.n_layers = n_layers
        self._shape = (batch, n_kv_heads, head_dim)
        self._dtype, self._device = dtype, torch.device(device)
        self._k: list[torch.Tensor | None] = [None] * n_layers  # each [B, Hkv, capacity, D]
        self._v: list[torch.Tensor | None] = [None] * n_layers
        self._n = [0] * n_layers

    def layer_len(self, layer: int) -> int:
        return self._n[layer]

    def _reserve(self, layer: int, need: int) -> None:
        buf = self._k[layer]
        cap = 0 if buf is None else buf.shape[2]
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, 256)
        b, h, d = self._shape
        k = torch.empty(b, h, new_cap, d, dtype=self._dtype, device=self._device)
        v = torch.empty_like(k)
        n = self._n[layer]
        if n:
            k[:, :, :n] = self._k[layer][:, :, :n]
            v[:, :, :n] = self._v[layer][:, :, :n]
        self._k[layer], self._v[layer] = k, v

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        n, t = self._n[layer], k.shape[2]
        self._reserve(layer, n + t)
        self._k[layer][:, :, n : n + t] = k
        self._v[layer][:, :, n : n + t] = v
        self._n[layer] = n + t

    def read_layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._n[layer]
        if self._k[layer] is None:
            b, h, d = self._shape
            empty = torch.empty(b, h, 0, d, dtype=self._dtype, device=self._device)
            return empty, empty
        return self._k[layer][:, :, :n], self._v[layer][:, :, :n]

    def attend(self, layer, q, scaling, sliding_window=None):
        k, v = self.read_layer(layer)
        return causal_prefill_attention(q, k, v, scaling, sliding_window)

    def truncate(self, n: int) -> None:
        self._n = [min(m, n) for m in self._n]

    def stats(self) -> dict:
        per_token = 2 * self._shape[0] * self._shape[1] * self._shape[2] * self._dtype.itemsize
        used = sum(self._n) * per_token
        key = "gpu_bytes" if self._device.type == "cuda" else "host_bytes"
        return {key: used, "tokens": max(self._n, default=0)}

    def close(self) -> None:
        self._k = [None] * self.n_layers
        self._v = [None] * self.n_layers
        self._n = [0] * self.n_layers
