"""Prefill attention: a query chunk at offset s = Lk - Lq attending causally over the layer's KV
[0, Lk), bottom-right aligned, GQA, optional sliding window. Triton flash-attention kernel.

Spec and production path: `reference.prefill_attention_ref` (torch SDPA with an explicit boolean
mask), which `offload.kernels.causal_prefill_attention` runs on every device until a GPU measurement
says otherwise. Layouts: q [B, H, Lq, D] (any strides, last 1), k, v [B, Hkv, Lk, D] -> out [B, Lq, H, D]
contiguous in q.dtype (HF's attention-interface layout).

Grid (cdiv(Lq, BLOCK_M), B * H): a program owns BLOCK_M queries of one head and streams the key
blocks that its causal (and window) band touches, with an online softmax in fp32.

To measure on GPU before choosing the production path (bench/kernels.py does not cover it yet):
SDPA with a mask (dispatches to the memory-efficient backend, not flash), flex_attention with a
causal/window block mask, and this kernel, at Lq = 512..2048 and Lk up to 200k, bf16, D 64/128/256;
and BLOCK_M / BLOCK_N / num_warps / num_stages for this kernel. Packing a GQA group's heads into the
M tile (K/V read once per group) is the next optimisation if this kernel wins.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import FLOATS, check_device, check_dtype, check_last_contiguous, check_shape
from ._launch import interpreting, next_pow2

__all__ = ["prefill_attention_triton"]


@triton.jit
def _prefill_kernel(
    Q, K, V, O, scale_log2, n_heads, q_len, k_len, head_dim, window,
    s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_ob, s_ot, s_oh,
    GROUP: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    kvh = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < head_dim
    offset = k_len - q_len
    qpos = offset + offs_m  # [BLOCK_M] key position of each query
    q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    q = tl.load(q_base + offs_m[:, None] * s_qt + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:  # interpreter: tl.dot on bf16 is wrong there (triton#11584)
        q = q.to(tl.float32)
    kv_base = b.to(tl.int64) * s_kb + kvh.to(tl.int64) * s_kh

    # key band of this tile: [lo, hi); causal: kpos <= max qpos; window: kpos > min qpos - window
    hi = tl.minimum(offset + start_m + BLOCK_M, k_len)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(offset + start_m - window + 1, 0) // BLOCK_N * BLOCK_N
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        kpos = n0 + offs_n  # [BLOCK_N]
        kv_mask = (kpos < k_len)[:, None] & d_ok[None, :]
        kv_off = kv_base + kpos[:, None].to(tl.int64) * s_kt + offs_d[None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N]
        keep = (kpos[None, :] <= qpos[:, None]) & (kpos < k_len)[None, :]
        if HAS_WINDOW:
            keep = keep & (kpos[None, :] > qpos[:, None] - window)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row may have no key in this block yet (m_new = -inf): subtract 0 there to avoid inf - inf
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_sub)
        p = tl.exp2(s - m_sub[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptr = O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh + offs_m[:, None].to(tl.int64) * s_ot + offs_d[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _tiles(dtype: torch.dtype, block_d: int) -> tuple[int, int]:
    """(BLOCK_M = BLOCK_N, num_warps): no ptxas spills on sm_80/89/90 (test_kernel_compile.py);
    fp32 dots run on FMA units and need half the tile. Speed is to be measured on a GPU."""
    block = (64 if block_d <= 128 else 32) // (2 if dtype == torch.float32 else 1)
    return block, 4 if block_d <= 64 else 8


def prefill_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    sliding_window: int | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Triton twin of `prefill_attention_ref`: q [B, H, Lq, D], k, v [B, Hkv, Lk, D] -> [B, Lq, H, D]."""
    check_dtype("q", q, FLOATS)
    check_shape("q", q, (None, None, None, None))
    b, h, lq, d = q.shape
    check_shape("k", k, (b, None, None, d))
    n_kv, lk = k.shape[1], k.shape[2]
    for name, t in (("k", k), ("v", v)):
        check_dtype(name, t, (q.dtype,))
        check_shape(name, t, (b, n_kv, lk, d))
        check_last_contiguous(name, t)
    check_last_contiguous("q", q)
    if k.stride() != v.stride():
        raise ValueError(f"k and v must share strides, got {k.stride()} and {v.stride()}")
    if h % n_kv:
        raise ValueError(f"query heads ({h}) must be a multiple of KV heads ({n_kv})")
    if lq > lk:
        raise ValueError(f"the KV ({lk} tokens) must include the {lq} query tokens (Lk >= Lq)")
    if sliding_window is not None and (isinstance(sliding_window, bool) or sliding_window < 1):
        raise ValueError(f"sliding_window must be None or >= 1, got {sliding_window!r}")
    dev = check_device(dict(q=q, k=k, v=v))
    out = torch.empty((b, lq, h, d), dtype=q.dtype, device=dev)
    if out.numel() == 0:
        return out
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    block_d = max(16, next_pow2(d))
    default, num_warps = _tiles(q.dtype, block_d)
    block_m = block_m or default
    block_n = block_n or default
    _prefill_kernel[(triton.cdiv(lq, block_m), b * h)](
        q, k, v, out, scale / math.log(2.0), h, lq, lk, d, sliding_window or 0,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        GROUP=h // n_kv, HAS_WINDOW=sliding_window is not None,
        DOT_FP32=interpreting() and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 stays exact, not TF32
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps, num_stages=2,
    )
    return out
