"""Chunk gather: copy selected chunks between pools in one launch, Triton.

dst_pool[dst_slots[i]] = src_pool[src_ids[i]] for i < m. Spec: `reference.gather_chunks_ref`.
    src_pool [N, *chunk] (CUDA, or pinned host: the kernel reads it zero-copy over PCIe through UVA,
    which Triton accepts since cuPointerGetAttribute maps a pinned pointer to a device one);
    dst_pool [S, *chunk] CUDA; src_ids, dst_slots [m] int32/int64 on dst's device; same dtype.
Each chunk must be contiguous inside its pool (any stride between chunks): a chunk is a flat row of
numel elements. Grid (m, cdiv(numel, BLOCK)): one launch for any number of chunks, m known from
shapes, no host sync. Duplicate dst_slots leave an unspecified one of the writes.

Why a kernel and not m cudaMemcpyAsync calls: one launch instead of m, and scattered host rows need
no staging copy. Why not always: copy engines run beside compute while this kernel takes SMs, and a
host read through the SMs may reach less PCIe bandwidth than the DMA engine. To measure on GPU
(bench/kernels.py): GB/s of this kernel from pinned host and device sources vs one contiguous
pinned copy of the same bytes; BLOCK and num_warps.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import INTS, check_device, check_dtype, check_shape, interpreting

__all__ = ["gather_chunks_triton"]


@triton.jit
def _gather_kernel(SRC, SRC_IDS, DST, DST_SLOTS, numel, s_src, s_dst, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    src = tl.load(SRC_IDS + i).to(tl.int64)  # int64: a host pool exceeds 2^31 elements
    dst = tl.load(DST_SLOTS + i).to(tl.int64)
    x = tl.load(SRC + src * s_src + offs, mask=ok)
    tl.store(DST + dst * s_dst + offs, x, mask=ok)


def _chunk_contiguous(t: torch.Tensor) -> bool:
    # chunk t[i] is one dense row: inner dims laid out row-major with stride 1 at the end
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def gather_chunks_triton(
    src_pool: torch.Tensor,
    src_ids: torch.Tensor,
    dst_pool: torch.Tensor,
    dst_slots: torch.Tensor,
    *,
    block: int = 4096,
) -> torch.Tensor:
    """Triton twin of `gather_chunks_ref`; returns dst_pool (written in place). See the module doc.

    Ids are not bounds-checked on the device (that would sync): callers own their validity.
    """
    if not isinstance(src_pool, torch.Tensor) or not isinstance(dst_pool, torch.Tensor):
        raise TypeError("src_pool and dst_pool must be torch.Tensors")
    if src_pool.dtype != dst_pool.dtype:
        raise TypeError(f"src_pool and dst_pool must share a dtype, got {src_pool.dtype} and {dst_pool.dtype}")
    if src_pool.dim() < 1 or src_pool.shape[1:] != dst_pool.shape[1:]:
        raise ValueError(f"pools must hold chunks of one shape, got src {list(src_pool.shape)} "
                         f"and dst {list(dst_pool.shape)}")
    for name, t in (("src_pool", src_pool), ("dst_pool", dst_pool)):
        if not _chunk_contiguous(t):
            raise ValueError(f"{name}'s chunks must each be contiguous, got strides {t.stride()}")
    check_dtype("src_ids", src_ids, INTS)
    check_shape("src_ids", src_ids, (None,))
    m = src_ids.shape[0]
    check_dtype("dst_slots", dst_slots, INTS)
    check_shape("dst_slots", dst_slots, (m,))
    if m and (src_ids.stride(0) != 1 or dst_slots.stride(0) != 1):
        raise ValueError("src_ids and dst_slots must be contiguous")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    check_device(dict(src_pool=src_pool, src_ids=src_ids, dst_pool=dst_pool, dst_slots=dst_slots),
                 allow_host=("src_pool",))
    if not interpreting() and src_ids.device != dst_pool.device:
        raise ValueError(f"src_ids must be on {dst_pool.device} (the kernel reads them), got {src_ids.device}")
    numel = math.prod(dst_pool.shape[1:])
    if m == 0 or numel == 0:
        return dst_pool
    _gather_kernel[(m, triton.cdiv(numel, block))](
        src_pool, src_ids, dst_pool, dst_slots, numel, src_pool.stride(0), dst_pool.stride(0),
        BLOCK=block, num_warps=4,
    )
    return dst_pool
