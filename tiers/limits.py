"""`TierLimits`: how big each tier is for one store, resolved from `OffloadConfig` on this machine.

- GPU budget (slots per layer): `gpu_mem` bytes of hot set split evenly over layers (a later issue
  sets per-layer budgets); unset: on CUDA half the free device memory at store creation, on CPU
  1 GiB — in both cases capped at what `ctx` tokens need. At least one slot per layer.
- host capacity (chunks): `host_mem` bytes, else `HOST_FRACTION` of the available host memory.
- compression on disk: `compress`, else on for bf16 only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .codec import default_compress
from .host import default_host_capacity
from .layout import ChunkLayout

__all__ = ["TierLimits"]

GPU_FRACTION = 0.5  # of free device memory for the hot set when gpu_mem is unset
CPU_POOL_BYTES = 1 << 30  # default "GPU" pool on a CPU-only machine (it is host memory there)


@dataclass(frozen=True)
class TierLimits:
    """budgets: GPU slots per layer; host_chunks: host pool capacity in chunks;
    compress: zstd on disk chunks; disk_dir: spill root (None = default)."""

    budgets: tuple[int, ...]
    host_chunks: int
    compress: bool
    disk_dir: str | None = None

    def __post_init__(self):
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be >= 1 per layer, got {self.budgets}")
        if self.host_chunks < 0:
            raise ValueError(f"host_chunks must be >= 0, got {self.host_chunks}")

    @classmethod
    def resolve(cls, layout: ChunkLayout, config, device: torch.device) -> "TierLimits":
        """Limits for `layout` under `config` (an OffloadConfig) on `device`."""
        per_layer_need = None
        if config.ctx is not None:
            per_layer_need = max(1, layout.body_chunks(config.ctx))
        if config.gpu_mem is not None:
            hot_bytes = config.gpu_mem
        elif device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            hot_bytes = int(free * GPU_FRACTION)
        else:
            hot_bytes = CPU_POOL_BYTES
        slots = max(1, hot_bytes // (layout.chunk_bytes * layout.n_layers))
        if per_layer_need is not None:
            slots = min(slots, per_layer_need)
        if config.host_mem is not None:
            host_chunks = config.host_mem // layout.chunk_bytes
        else:
            host_chunks = default_host_capacity(layout.chunk_bytes)
        return cls(
            budgets=(slots,) * layout.n_layers,
            host_chunks=host_chunks,
            compress=default_compress(layout.dtype, config.compress),
            disk_dir=config.disk_dir,
        )
