"""Sparse decode attention (flash-decoding over a block table), Triton.

One query token per sequence attends to (a) the body: chunks of the GPU pool named by a per
(batch, KV head) block table, the last one possibly partial, and (b) the extra tokens: sinks + recent
window in a small contiguous buffer, any order (a ring buffer is fine: softmax ignores order).
Layouts are those of `reference.sparse_decode_attention_ref`, the spec:
    q [B, H, D]; k_pool, v_pool [S, Hkv or B*Hkv, C, D]; block_table [B, Hkv, M]; body_len [B, Hkv];
    extra_k, extra_v [B, Hkv, E, D]; extra_len [B]  ->  out [B, H, D] (q.dtype), lse [B, H] fp32.

Grid (B * Hkv, splits). A program owns one KV head of one sequence and computes all G query heads of
that head together: q is a [BLOCK_G, D] tile (G padded to >= 16 with masked rows, since tl.dot on CUDA
needs M, N, K >= 16), scores are one tl.dot per BLOCK_N tokens, so each K/V byte is read once per
group. The row's tokens body ++ extra are split evenly (at run time, from its own length) over the
splits; a split walks its body part, then its extra part, and writes a partial (out, lse) that a second
kernel merges (split-K); with one split the first kernel writes the output. Nothing here syncs with
the host (splits come from shapes); out, lse and the partials come from torch's caching allocator.
The split count is a run-time argument (a constexpr would recompile as the context grows).

To measure on GPU (bench/kernel_speed.py): BLOCK_N, num_warps, num_stages and the split heuristic.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import FLOATS, INTS, check_device, check_dtype, check_last_contiguous, check_shape
from ._launch import interpreting, next_pow2
from .decode_common import LN2, attend_block, check_extra, check_pair, precision, reduce_splits, split_outputs, tiles

__all__ = ["sparse_decode_attention_triton"]



@triton.jit
def _decode_split_kernel(
    Q, K, V, BT, BODY, XK, XV, XLEN, O, LSE, MID_O, MID_LSE,
    scale_log2, n_kv, head_dim, chunk, n_splits,
    s_qb, s_qh, s_ks, s_kb, s_kh, s_kt, s_btb, s_bth, s_lb, s_lh, s_xb, s_xh, s_xt, s_ob, s_oh,
    GROUP: tl.constexpr, SPLIT: tl.constexpr, HAS_EXTRA: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // n_kv
    kvh = pid % n_kv
    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    g_ok = offs_g < GROUP
    d_ok = offs_d < head_dim
    head = kvh * GROUP + offs_g  # [BLOCK_G] query heads of this KV head
    q = tl.load(Q + b * s_qb + head[:, None] * s_qh + offs_d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:  # interpreter: tl.dot on bf16 is wrong there (triton#11584)
        q = q.to(tl.float32)

    body = tl.load(BODY + b * s_lb + kvh * s_lh).to(tl.int32)
    total = body
    if HAS_EXTRA:
        total += tl.load(XLEN + b).to(tl.int32)
    per_split = tl.cdiv(tl.cdiv(total, n_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, total)

    bt_row = BT + b * s_btb + kvh * s_bth
    k_head = b.to(tl.int64) * s_kb + kvh.to(tl.int64) * s_kh  # s_kb = 0 unless pool rows are B*Hkv
    x_row = b.to(tl.int64) * s_xb + kvh.to(tl.int64) * s_xh
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    # two loops, body then extra, rather than one loop with both loads masked: one set of 2-D
    # pointers live at a time (measured at compile time for sm_89: 216 -> ~96 registers). Each block
    # starts at a valid token (t0 < its loop's end), so no row of s is all -inf.
    body_end = tl.minimum(end, body)
    for t0 in range(start, body_end, BLOCK_N):
        t = t0 + offs_n  # [BLOCK_N] positions in the body
        ok = t < body_end
        # token t: chunk block_table[t // C], row t % C; int64 offsets (pools exceed 2^31 elements)
        slot = tl.load(bt_row + t // chunk, mask=ok, other=0).to(tl.int64)
        off = slot * s_ks + k_head + (t % chunk).to(tl.int64) * s_kt
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(K + off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        m_i, l_i, acc = attend_block(q, k, v, ok, m_i, l_i, acc, scale_log2, DOT_FP32, PRECISION)
    if HAS_EXTRA:
        for t0 in range(tl.maximum(start, body), end, BLOCK_N):
            t = t0 + offs_n  # [BLOCK_N] positions in body ++ extra; extra token t - body
            ok = t < end
            x_off = x_row + (t - body).to(tl.int64) * s_xt
            kv_mask = ok[:, None] & d_ok[None, :]
            k = tl.load(XK + x_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(XV + x_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            m_i, l_i, acc = attend_block(q, k, v, ok, m_i, l_i, acc, scale_log2, DOT_FP32, PRECISION)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453  # natural log; -inf for an empty split
    st_mask = g_ok[:, None] & d_ok[None, :]
    if not SPLIT:
        tl.store(O + b * s_ob + head[:, None] * s_oh + offs_d[None, :], out.to(O.dtype.element_ty), mask=st_mask)
        tl.store(LSE + b * (n_kv * GROUP) + head, lse, mask=g_ok)
    else:
        # partials: MID_O [B*H, n_splits, D], MID_LSE [B*H, n_splits], fp32 contiguous
        row = (b * (n_kv * GROUP) + head) * n_splits + split
        tl.store(MID_O + row[:, None] * head_dim + offs_d[None, :], out, mask=st_mask)
        tl.store(MID_LSE + row, lse, mask=g_ok)


def sparse_decode_attention_triton(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    body_len: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_len: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `sparse_decode_attention_ref` (same arguments and results; see the module doc).

    num_splits / block_n override the heuristics (tests, tuning). No host sync: safe in a decode loop.
    """
    check_dtype("q", q, FLOATS)
    check_shape("q", q, (None, None, None))
    b, h, d = q.shape
    check_dtype("block_table", block_table, INTS)
    check_shape("block_table", block_table, (b, None, None))
    n_kv = block_table.shape[1]
    check_shape("k_pool", k_pool, (None, None, None, d))
    n_slots, n_rows, chunk, _ = k_pool.shape
    if n_rows not in (n_kv, b * n_kv):
        raise ValueError(f"k_pool rows per slot must be Hkv ({n_kv}) or B*Hkv ({b * n_kv}), got {n_rows}")
    check_pair(("k_pool", "v_pool"), k_pool, v_pool, q.dtype, (n_slots, n_rows, chunk, d))
    if h % n_kv:
        raise ValueError(f"query heads ({h}) must be a multiple of KV heads ({n_kv})")
    check_last_contiguous("q", q)
    check_last_contiguous("block_table", block_table)
    check_dtype("body_len", body_len, INTS)
    check_shape("body_len", body_len, (b, n_kv))
    n_extra = check_extra(extra_k, extra_v, extra_len, b, n_kv, d, q.dtype)
    has_extra = extra_k is not None
    dev = check_device(dict(q=q, k_pool=k_pool, v_pool=v_pool, block_table=block_table, body_len=body_len,
                            extra_k=extra_k, extra_v=extra_v, extra_len=extra_len))
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)

    group = h // n_kv
    capacity = block_table.shape[2] * chunk + n_extra  # tokens a row can hold: known without a sync
    block_d, block_n, splits = tiles(q.dtype, d, dev, b * n_kv, capacity, block_n, num_splits)
    out, lse, mid_o, mid_lse = split_outputs(b, h, d, splits, q.dtype, dev)
    xk, xv, xlen = (extra_k, extra_v, extra_len) if has_extra else (k_pool, v_pool, body_len)
    xs = extra_k.stride()[:3] if has_extra else (0, 0, 0)
    _decode_split_kernel[(b * n_kv, splits)](
        q, k_pool, v_pool, block_table, body_len, xk, xv, xlen, out, lse, mid_o, mid_lse,
        scale / LN2, n_kv, d, chunk, splits,
        q.stride(0), q.stride(1), k_pool.stride(0), n_kv * k_pool.stride(1) if n_rows != n_kv else 0,
        k_pool.stride(1), k_pool.stride(2), block_table.stride(0), block_table.stride(1),
        body_len.stride(0), body_len.stride(1), *xs, out.stride(0), out.stride(1),
        GROUP=group, SPLIT=splits > 1, HAS_EXTRA=has_extra,
        DOT_FP32=interpreting() and q.dtype == torch.bfloat16, PRECISION=precision(q.dtype),
        BLOCK_G=max(16, next_pow2(group)), BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4, num_stages=2,
    )
    reduce_splits(mid_o, mid_lse, out, lse, splits, block_d)
    return out, lse
