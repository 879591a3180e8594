"""Where layer-major prefill keeps the prompt's hidden states: on the compute device, or in host memory.

Layer-major prefill runs every layer over the whole prompt before the next layer, so the hidden
states of all T new tokens ([1, T, hidden]) live across the whole pass. At long contexts they do not
fit beside the weights: Llama-3.1-8B at 1M tokens in bf16 is 1M * 4096 * 2 B = 8 GiB, on a 24 GiB
GPU that holds 16 GiB of weights. Past `HIDDEN_ON_DEVICE_MAX` bytes the engine keeps them in a
(pinned) host buffer instead and streams one prefill chunk at a time: each chunk of each layer is
copied to the device, run through the layer, and its output copied back over its input.

Why that costs little: the host copy moves 2 * T * hidden * itemsize bytes over PCIe per layer (each
chunk in and out once). At 200k tokens that is ~3.3 GB per layer of Llama-3.1-8B, ~0.13 s at
25 GB/s, small next to the seconds a layer's prefill compute takes at that length (attention is
quadratic in T; the transfer is linear). Below the threshold the device copy is kept: no transfer,
and the memory is small enough not to matter.

On a CPU device host and device are the same memory: the states never move (`hidden_on_host` is
False there; the engine's `hidden_host=True` forces the host path anyway, which is how the CPU tests
run it).

This module is the one writer of that choice and its bytes: the engine asks `hidden_on_host`, the
memory plan asks `prefill_hidden_bytes`.
"""

from __future__ import annotations

import torch

__all__ = ["HIDDEN_ON_DEVICE_MAX", "hidden_on_host", "prefill_hidden_bytes"]

HIDDEN_ON_DEVICE_MAX = 1 << 30  # bytes: a prompt's hidden states stay on the compute device up to this


def hidden_on_host(device: torch.device | str, n_tokens: int, hidden: int, itemsize: int) -> bool:
    """True iff prefill of `n_tokens` new tokens on `device` keeps their hidden states
    ([1, n_tokens, hidden] of `itemsize`-byte elements) in host memory: a CUDA device and more than
    `HIDDEN_ON_DEVICE_MAX` bytes."""
    return torch.device(device).type == "cuda" and n_tokens * hidden * itemsize > HIDDEN_ON_DEVICE_MAX


def prefill_hidden_bytes(device: torch.device | str, n_tokens: int, hidden: int, itemsize: int,
                         chunk: int) -> tuple[int, int]:
    """(device bytes, host bytes) the prompt's hidden states take during prefill of `n_tokens` in
    chunks of `chunk` tokens. On the device: the whole prompt there, nothing on the host. On the host:
    the whole prompt in host memory; on the device the chunk in flight and the layer's output for it."""
    whole = n_tokens * hidden * itemsize
    if not hidden_on_host(device, n_tokens, hidden, itemsize):
        return whole, 0
    return 2 * min(chunk, n_tokens) * hidden * itemsize, whole
