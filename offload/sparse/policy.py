"""What a selection policy is: its parameters (a frozen dataclass) and the state it keeps per store.

A policy decides which body units (chunks, or single tokens) each KV head attends to at a decode
step. Its dataclass fields are its parameters; `start(geometry)` makes its per-store state, which
owns the policy's own summary of the keys and answers a few hooks, called by the `Selector`:

- `before_chunks(layer, keys)`: the layer is about to get its first body chunks; keys [R, N, D] is
  every key it holds (the prompt): where a projection basis comes from.
- `add(layer, j, keys)`: chunks j .. j+n-1 joined the body, keys [R, n*C, D] on the device.
- `observe(layer, mass, n_chunks)`: prefill statistics, the attention mass [B, Hkv, n] the prompt's
  last queries pay each key (only for policies with `observes = True`).
- `scores(layer, q, n_chunks, k, scaling, rows_k)`: a score per unit for q [B, H, D]; the Selector
  keeps the top k (or each row its own rows_k).
- `candidates(layer, q, n_chunks, k, scaling)`: None (score every unit), or the unit ids
  [B, Hkv, T] a two-level policy ranks at this step; the Selector then calls
  `scores(..., among=ids)`, whose scores [B, Hkv, T] follow those ids.
- `chose(layer, idx, n_chunks)` / `attended(layer, ids, mass)`: what was selected, and the mass
  each selected unit got at the step (only for `wants_mass`): eviction and accumulation (h2o).
- `truncate(layer, m)`; `state_dict()` / `load_state_dict(d)` (saved in sessions); `nbytes`.

The registry (`policies/__init__.py`) finds every policy class in `offload/sparse/policies/`:
adding a policy is adding a file there (and its test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["SelectionPolicy", "PolicyState", "Geometry"]


@dataclass(frozen=True)
class Geometry:
    """The store a policy state serves: rows are batch * n_kv; sinks: tokens before the body;
    capacity: body chunks per layer to preallocate (grown by doubling); kv_dtype: the KV's dtype."""

    n_layers: int
    batch: int
    n_kv: int
    head_dim: int
    chunk: int
    device: torch.device
    sinks: int = 0
    capacity: int = 64
    kv_dtype: torch.dtype = torch.bfloat16


    def chunked(self, keys: torch.Tensor) -> torch.Tensor:
        """Keys [R, n*C, D] of whole chunks as [B, Hkv, n, C, D] fp32 (what summaries are made of)."""
        return keys.float().reshape(self.batch, self.n_kv, -1, self.chunk, self.head_dim)


@dataclass(frozen=True)
class SelectionPolicy:
    """Base of every policy: `name` (registry key), `chunk` (its default tokens per chunk: its
    summaries are per chunk), `observes` (takes prefill statistics), `summary` (one line for --help)."""

    name: ClassVar[str] = ""
    chunk: ClassVar[int] = 16
    observes: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    @property
    def selects_tokens(self) -> bool:
        """Selections name single body tokens (else whole chunks)."""
        return False

    def start(self, geometry: Geometry) -> "PolicyState":
        raise NotImplementedError

    def summary_bytes(self, head_dim: int, chunk: int, kv_itemsize: int) -> float:
        """Device bytes of this policy's key summary per token and KV head (for the memory plan)."""
        return 0.0

    def placed_bytes(self, head_dim: int, chunk: int, kv_itemsize: int, device_type: str) -> tuple[float, float]:
        """(compute-device, host) bytes of the key summary per token and KV head on a `device_type`
        machine: all on the device unless a policy keeps part of it in host memory."""
        return self.summary_bytes(head_dim, chunk, kv_itemsize), 0.0


class PolicyState:
    """Per-store state of a policy; every hook is a no-op here (see the module doc)."""

    wants_mass = False

    def __init__(self, policy: SelectionPolicy, geometry: Geometry):
        self.policy, self.geometry = policy, geometry

    def before_chunks(self, layer: int, keys: torch.Tensor) -> None:
        pass

    def add(self, layer: int, j: int, keys: torch.Tensor) -> None:
        pass

    def observe(self, layer: int, mass: torch.Tensor, n_chunks: int) -> None:
        pass

    def candidates(self, layer: int, q: torch.Tensor, n_chunks: int, k: int,
                   scaling: float) -> torch.Tensor | None:  # fmt: skip
        return None

    def scores(self, layer: int, q: torch.Tensor, n_chunks: int, k: int, scaling: float,
               rows_k: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        raise NotImplementedError

    def chose(self, layer: int, idx: torch.Tensor, n_chunks: int) -> None:
        pass

    def attended(self, layer: int, ids: torch.Tensor, mass: torch.Tensor) -> None:
        pass

    def truncate(self, layer: int, m: int) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    @property
    def nbytes(self) -> int:
        return 0
