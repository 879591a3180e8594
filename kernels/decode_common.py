"""What the split-K decode kernels share (sparse_decode.py over chunks, token_decode.py over single
tokens): the online-softmax step over a block of keys, the kernel that merges the splits' partials by
log-sum-exp, and the launch heuristics (tile, splits, dot precision)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import interpreting

__all__ = ["LN2", "attend_block", "decode_reduce_kernel", "precision", "default_block_n", "default_splits"]

LN2 = math.log(2.0)


@triton.jit
def attend_block(q, k, v, ok, m_i, l_i, acc, scale_log2, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step. q [BLOCK_G, D]; k, v [BLOCK_N, D]; ok [BLOCK_N] valid tokens;
    m_i, l_i [BLOCK_G] running max (log2 units) and denominator; acc [BLOCK_G, D] fp32."""
    if DOT_FP32:  # interpreter: tl.dot on bf16 is wrong there (triton#11584)
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [BLOCK_G, BLOCK_N]
    s = tl.where(ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def decode_reduce_kernel(
    MID_O, MID_LSE, O, LSE, n_heads, head_dim, n_splits, s_ob, s_oh,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # one program per (batch, query head): out = sum_s w_s o_s / sum_s w_s, w_s = exp(lse_s - max)
    bh = tl.program_id(0)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_splits
    d_ok = offs_d < head_dim
    lse = tl.load(MID_LSE + bh * n_splits + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m)  # [BLOCK_S], 0 for empty splits
    o = tl.load(MID_O + (bh * n_splits + offs_s)[:, None] * head_dim + offs_d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    denom = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(denom == 0.0, 1.0, denom)
    b = bh // n_heads
    h = bh % n_heads
    tl.store(O + b * s_ob + h * s_oh + offs_d, out.to(O.dtype.element_ty), mask=d_ok)
    lse_out = tl.where(denom == 0.0, float("-inf"), m + tl.log(tl.where(denom == 0.0, 1.0, denom)))
    tl.store(LSE + bh, lse_out)  # -inf: an empty row


def precision(dtype: torch.dtype) -> str:
    # fp32 inputs must not be rounded to TF32 (they are the exact path); 16-bit ones ignore the flag
    return "ieee" if dtype == torch.float32 else "tf32"


def default_block_n(dtype: torch.dtype, block_d: int) -> int:
    """Tokens per loop step (num_warps=4, num_stages=2). Chosen so that ptxas reports no spills for
    sm_80/89/90 (tests/kernels/test_kernel_compile.py); fp32 dots run on FMA units and need smaller
    tiles. Speed is to be measured on a GPU."""
    if dtype == torch.float32:
        return 32 if block_d <= 64 else 16
    return 64 if block_d <= 128 else 32


def default_splits(device: torch.device, n_programs: int, capacity: int, block_n: int) -> int:
    """Splits per row so that ~2 waves of programs fill the GPU, each split >= 4 blocks of tokens."""
    if interpreting() or device.type != "cuda":
        sms = 1
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, max(1, n_programs))
    return int(max(1, min(want, triton.cdiv(capacity, 4 * block_n), 64)))
