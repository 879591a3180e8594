"""What every Triton launcher in this package checks before it computes a grid.

Launchers raise TypeError for a wrong dtype and ValueError for a wrong shape, stride or device, naming
the argument, so that a caller's mistake never reaches a kernel as a silent out-of-bounds read.
"""

from __future__ import annotations

import os

import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
INTS = (torch.int32, torch.int64)


def interpreting() -> bool:
    """True under TRITON_INTERPRET (read at launch, not import: tests set it before launching)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def check_dtype(name: str, t: torch.Tensor, allowed: tuple) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in allowed:
        names = ", ".join(str(a).removeprefix("torch.") for a in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    """shape: expected sizes, None where any size goes."""
    ok = t.dim() == len(shape) and all(e is None or e == s for e, s in zip(shape, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


def check_last_contiguous(name: str, t: torch.Tensor) -> None:
    # kernels load rows of the last dimension as vectors: it must have stride 1
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension (stride 1), got {t.stride()}")


def check_device(tensors: dict) -> torch.device:
    """All tensors on one CUDA device (any device when interpreting). Returns the compute device."""
    items = {k: t for k, t in tensors.items() if t is not None}
    if interpreting():
        devs = {t.device for t in items.values()}
        if len(devs) > 1:
            raise ValueError(f"tensors are on different devices: {sorted(map(str, devs))}")
        return next(iter(devs))
    dev = None
    for name, t in items.items():
        if not t.is_cuda:
            raise ValueError(f"{name} must be a CUDA tensor (Triton kernels), got device {t.device}; "
                             "use offload.kernels.dispatch, which runs the torch reference off CUDA")
        if dev is not None and t.device != dev:
            raise ValueError(f"{name} is on {t.device}, other tensors on {dev}")
        dev = t.device
    if dev is None:
        raise ValueError("no CUDA tensor among the arguments")
    return dev
