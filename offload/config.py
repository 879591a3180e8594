"""`OffloadConfig`: every knob of the runtime in one frozen, validated dataclass; the sparse-decode
knobs are grouped in `SparseConfig` (`offload/sparse/config.py`), None = dense attention.

What a config means on a machine for a model (chunk size, store kind, slot budgets, ...) is derived
in one place, `offload/store_spec.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .errors import ConfigError
from .sparse.config import SparseConfig

__all__ = ["OffloadConfig", "SparseConfig"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_STORES = ("dense", "tiered")


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class OffloadConfig:
    """Runtime configuration.

    ctx: context window in tokens (prompt + generated); None = the model's trained context.
    prefill_chunk: tokens per chunk in layer-major prefill; bounds activation memory.
    device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N".
    dtype: "auto" (bf16 on CUDA, fp32 on CPU: bf16 matmuls are several times slower on CPU) or a
        dtype name.
    kv_store: "dense" keeps every KV entry on the compute device; "tiered" spreads chunks over the
        GPU pool, the pinned host pool and the disk store. A sparse config runs on the tiered store
        whatever this says (selection, summaries and fetching live there).
    kv_chunk: tokens per KV chunk, the unit of placement and transfer (and of chunk selections);
        None = the selection policy's own (8 for `token`, 16 for the others) with a sparse config,
        64 without (bigger chunks move faster and cost less bookkeeping).
    sinks / window: leading tokens and most recent tokens always kept on the compute device.
    gpu_mem: GPU memory the memory plan (`offload.plan`) plans for; None = the device's (on a CPU:
        its RAM, where the "GPU" pool lives). hot_set_bytes: bytes of the GPU hot set (chunk slots);
        None = what that plan leaves after weights, activations and buffers (`StoreSpec`).
    host_mem: bytes of the pinned host pool; None = half the available host memory.
    disk_dir: where spill files go (None = a private dir under the cache).
    compress: zstd on disk chunks; None = on where it pays (bf16 KV), off otherwise.
    sparse: sparse decode (`SparseConfig`: budget, selection policy, split over layers, ...);
        None = every step attends to the whole context.
    threads: CPU threads for prefill and decode (like llama.cpp's -t); None = torch's for prefill
        and, on a CPU, the count measured fastest while decoding (`offload.decode_threads`).
    """

    ctx: int | None = None
    prefill_chunk: int = 512
    device: str = "auto"
    dtype: str = "auto"
    kv_store: str = "dense"
    kv_chunk: int | None = None
    sinks: int = 4
    window: int = 64
    gpu_mem: int | None = None
    hot_set_bytes: int | None = None
    host_mem: int | None = None
    disk_dir: str | None = None
    compress: bool | None = None
    sparse: SparseConfig | None = None
    threads: int | None = None

    def __post_init__(self):
        _positive_int("ctx", self.ctx, allow_none=True)
        _positive_int("prefill_chunk", self.prefill_chunk)
        _positive_int("kv_chunk", self.kv_chunk, allow_none=True)
        _positive_int("gpu_mem", self.gpu_mem, allow_none=True)
        _positive_int("hot_set_bytes", self.hot_set_bytes, allow_none=True)
        _positive_int("host_mem", self.host_mem, allow_none=True)
        _positive_int("threads", self.threads, allow_none=True)
        for name in ("sinks", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.kv_store not in _STORES:
            raise ConfigError(f"kv_store must be one of {_STORES}, got {self.kv_store!r}")
        if self.compress not in (None, True, False):
            raise ConfigError(f"compress must be None, True or False, got {self.compress!r}")
        if self.sparse is not None and not isinstance(self.sparse, SparseConfig):
            raise ConfigError(f"sparse must be a SparseConfig or None, got {self.sparse!r}")
        dev = self.device
        if dev != "auto" and not (dev == "cpu" or dev == "cuda" or dev.startswith("cuda:")):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} asked for, but torch sees no CUDA device")

    def torch_device(self) -> torch.device:
        """The compute device this config resolves to on this machine."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        """The compute dtype: bf16 on CUDA, fp32 on CPU, unless set."""
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def replace(self, **changes) -> "OffloadConfig":
        """A copy with `changes` applied (and validated)."""
        return replace(self, **changes)
