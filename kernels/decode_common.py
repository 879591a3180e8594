"""What the split-K decode kernels share (sparse_decode.py over chunks, token_decode.py over single
tokens): the online-softmax step over a block of keys, the kernel that merges the splits' partials by
log-sum-exp, and the launch heuristics (tile, splits, dot precision)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import INTS, check_dtype, check_last_contiguous, check_shape, interpreting, next_pow2

__all__ = ["LN2", "attend_block", "decode_reduce_kernel", "precision", "default_block_n", "default_splits",
           "check_pair", "check_extra", "tiles", "split_outputs", "reduce_splits"]

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


def check_pair(names: tuple, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, shape: tuple) -> None:
    """Two tensors read with one set of strides (k and v): dtype, shape, stride 1 last, same strides."""
    for name, t in zip(names, (a, b)):
        check_dtype(name, t, (dtype,))
        check_shape(name, t, shape)
        check_last_contiguous(name, t)
    if a.stride() != b.stride():
        raise ValueError(f"{names[0]} and {names[1]} must share strides, got {a.stride()} and {b.stride()}")


def check_extra(extra_k, extra_v, extra_len, b: int, n_kv: int, d: int, dtype: torch.dtype) -> int:
    """The sinks + window arguments (all three or none): their token count E (0 without)."""
    if (extra_k is not None) != (extra_v is not None) or (extra_k is not None) != (extra_len is not None):
        raise ValueError("extra_k, extra_v and extra_len go together: give all three or none")
    if extra_k is None:
        return 0
    check_shape("extra_k", extra_k, (b, n_kv, None, d))
    n_extra = extra_k.shape[2]
    check_pair(("extra_k", "extra_v"), extra_k, extra_v, dtype, (b, n_kv, n_extra, d))
    check_dtype("extra_len", extra_len, INTS)
    check_shape("extra_len", extra_len, (b,))
    if extra_len.stride(0) != 1 and b > 1:
        raise ValueError(f"extra_len must be contiguous, got stride {extra_len.stride()}")
    return n_extra


def tiles(dtype: torch.dtype, d: int, device, n_programs: int, capacity: int, block_n=None, num_splits=None):
    """(BLOCK_D, BLOCK_N, splits) of a split-K decode launch: the heuristics, or the caller's checked
    overrides. capacity: tokens a row can hold, from shapes (never read from the device)."""
    block_d = max(16, next_pow2(d))
    block_n = block_n or default_block_n(dtype, block_d)
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    splits = num_splits or default_splits(device, n_programs, capacity, block_n)
    if not 1 <= splits <= 64:
        raise ValueError(f"num_splits must be in [1, 64], got {splits}")
    return block_d, block_n, splits


def split_outputs(b: int, h: int, d: int, splits: int, dtype: torch.dtype, device):
    """(out [B, H, D], lse [B, H] fp32, partial outs, partial lses): the partials are fp32
    [B*H, splits, D] and [B*H, splits], or `out` itself as a placeholder with one split."""
    out = torch.empty((b, h, d), dtype=dtype, device=device)
    lse = torch.empty((b, h), dtype=torch.float32, device=device)
    if splits == 1:
        return out, lse, out, out
    mid_o = torch.empty((b * h, splits, d), dtype=torch.float32, device=device)
    return out, lse, mid_o, torch.empty((b * h, splits), dtype=torch.float32, device=device)


def reduce_splits(mid_o, mid_lse, out: torch.Tensor, lse: torch.Tensor, splits: int, block_d: int) -> None:
    """Merge the splits' partials into out and lse (nothing to do with one split)."""
    if splits > 1:
        b, h, d = out.shape
        decode_reduce_kernel[(b * h,)](
            mid_o, mid_lse, out, lse, h, d, splits, out.stride(0), out.stride(1),
            BLOCK_S=next_pow2(splits), BLOCK_D=block_d, num_warps=4,
        )
