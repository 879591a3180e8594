"""Token-gather sparse decode attention (flash-decoding over single selected tokens), Triton.

The `token` selection policy picks single body tokens per row (row = (batch, KV head)); this kernel
reads them straight from the GPU pool, without gathering them into a buffer first. Layouts are those
of `reference.token_decode_attention_ref`, the spec:
    q [B, H, D]; k_pool, v_pool [S, R, C, D] (R = B*Hkv, row b*Hkv + h); chunk_slot [M];
    token_ids [R, K]; row_len [R]; extra_k, extra_v [B, Hkv, E, D]; extra_len [B]
    ->  out [B, H, D] (q.dtype), lse [B, H] fp32.

The structure is `sparse_decode`'s: grid (R, splits); a program owns one row and computes all G query
heads of it together (q a [BLOCK_G, D] tile, G padded to >= 16 for tl.dot); the row's tokens
ids ++ extra are split evenly over the splits from its own length (a short row does no work for the
widest one's tail), and `decode_common.decode_reduce_kernel` merges the splits' partials by
log-sum-exp. Where that kernel computes a token's place from its position in the block table, this
one loads its id: token t = token_ids[r, i] lives at offset t % C of slot chunk_slot[t // C], row r.
Ids past row_len are masked before any load that depends on them. No host sync, no allocation but
out, lse and the partials (torch's caching allocator); the split count is a run-time argument.

To measure on GPU: BLOCK_N, num_warps, num_stages and the split heuristic (borrowed from
`sparse_decode`: a token costs the same D-vector load either way, one more index load per token).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import FLOATS, INTS, check_device, check_dtype, check_last_contiguous, check_shape
from ._launch import interpreting, next_pow2
from .decode_common import LN2, attend_block, check_extra, check_pair, precision, reduce_splits, split_outputs, tiles

__all__ = ["token_decode_attention_triton"]


@triton.jit
def _token_split_kernel(
    Q, K, V, SLOT, IDS, LEN, XK, XV, XLEN, O, LSE, MID_O, MID_LSE,
    scale_log2, n_kv, head_dim, chunk, n_splits,
    s_qb, s_qh, s_ks, s_kr, s_kt, s_slot, s_ir, s_it, s_xb, s_xh, s_xt, s_ob, s_oh,
    GROUP: tl.constexpr, SPLIT: tl.constexpr, HAS_EXTRA: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)  # b * n_kv + kv head: the pool row and the row of IDS
    split = tl.program_id(1)
    b = row // n_kv
    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP
    d_mask = offs_d < head_dim
    gd_mask = g_mask[:, None] & d_mask[None, :]
    head = (row % n_kv) * GROUP + offs_g  # [BLOCK_G] query heads of the row, within sequence b
    bh = row * GROUP + offs_g  # [BLOCK_G] flat (batch, query head) = b * H + head
    qv = tl.load(Q + b * s_qb + head[:, None] * s_qh + offs_d[None, :], mask=gd_mask, other=0.0)
    if DOT_FP32:  # interpreter: tl.dot on bf16 is wrong there (triton#11584)
        qv = qv.to(tl.float32)

    n_ids = tl.load(LEN + row).to(tl.int32)
    n_all = n_ids + tl.load(XLEN + b).to(tl.int32) if HAS_EXTRA else n_ids
    span = tl.cdiv(tl.cdiv(n_all, n_splits), BLOCK_N) * BLOCK_N  # tokens per split, whole blocks
    lo = split * span
    hi = tl.minimum(lo + span, n_all)

    pool_row = row.to(tl.int64) * s_kr
    ids_row = IDS + row.to(tl.int64) * s_ir
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    # ids, then extra: two loops, as in sparse_decode (one set of 2-D pointers live at a time); every
    # block starts at a valid token, so no row of the scores is all -inf
    ids_hi = tl.minimum(hi, n_ids)
    for i0 in range(lo, ids_hi, BLOCK_N):
        i = i0 + offs_n  # [BLOCK_N] entries of the row's ids
        ok = i < ids_hi  # entries past row_len may be garbage: nothing below reads them
        tok = tl.load(ids_row + i * s_it, mask=ok, other=0).to(tl.int32)  # body positions
        slot = tl.load(SLOT + (tok // chunk) * s_slot, mask=ok, other=0).to(tl.int64)
        ptr = slot * s_ks + pool_row + (tok % chunk).to(tl.int64) * s_kt  # int64: pools pass 2^31
        tile_mask = ok[:, None] & d_mask[None, :]
        kt = tl.load(K + ptr[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)
        vt = tl.load(V + ptr[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)
        m_i, l_i, acc = attend_block(qv, kt, vt, ok, m_i, l_i, acc, scale_log2, DOT_FP32, PRECISION)
    if HAS_EXTRA:
        x_base = b.to(tl.int64) * s_xb + (row % n_kv).to(tl.int64) * s_xh
        for i0 in range(tl.maximum(lo, n_ids), hi, BLOCK_N):
            i = i0 + offs_n  # [BLOCK_N] positions in ids ++ extra: extra token i - n_ids
            ok = i < hi
            ptr = x_base + (i - n_ids).to(tl.int64) * s_xt
            tile_mask = ok[:, None] & d_mask[None, :]
            kt = tl.load(XK + ptr[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)
            vt = tl.load(XV + ptr[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)
            m_i, l_i, acc = attend_block(qv, kt, vt, ok, m_i, l_i, acc, scale_log2, DOT_FP32, PRECISION)

    denom = tl.where(l_i == 0.0, 1.0, l_i)  # 0: nothing attended (out 0, lse -inf)
    res = acc / denom[:, None]
    res_lse = (m_i + tl.log2(denom)) * 0.6931471805599453  # log2 units -> natural log
    if SPLIT:  # partials MID_O [B*H, n_splits, D], MID_LSE [B*H, n_splits] for the reduce kernel
        part = bh * n_splits + split
        tl.store(MID_LSE + part, res_lse, mask=g_mask)
        tl.store(MID_O + part[:, None] * head_dim + offs_d[None, :], res, mask=gd_mask)
    else:
        tl.store(LSE + bh, res_lse, mask=g_mask)
        tl.store(O + b * s_ob + head[:, None] * s_oh + offs_d[None, :], res.to(O.dtype.element_ty), mask=gd_mask)


def token_decode_attention_triton(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    chunk_slot: torch.Tensor,
    token_ids: torch.Tensor,
    row_len: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_len: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `token_decode_attention_ref` (same arguments and results; see the module doc).

    num_splits / block_n override the heuristics (tests, tuning). No host sync: safe in a decode loop.
    """
    check_dtype("q", q, FLOATS)
    check_shape("q", q, (None, None, None))
    check_last_contiguous("q", q)
    n_b, n_h, d = q.shape
    check_shape("k_pool", k_pool, (None, None, None, d))
    n_slots, n_rows, chunk, _ = k_pool.shape
    check_pair(("k_pool", "v_pool"), k_pool, v_pool, q.dtype, (n_slots, n_rows, chunk, d))
    if n_b == 0 or n_rows == 0 or n_rows % n_b or n_h % (n_rows // n_b):  # n_rows // n_b = Hkv
        raise ValueError(f"k_pool rows per slot ({n_rows}) must be B*Hkv with B = {n_b} and Hkv dividing "
                         f"the query heads ({n_h})")
    n_kv = n_rows // n_b
    check_dtype("chunk_slot", chunk_slot, INTS)
    check_shape("chunk_slot", chunk_slot, (None,))
    check_dtype("token_ids", token_ids, INTS)
    check_shape("token_ids", token_ids, (n_rows, None))
    check_dtype("row_len", row_len, INTS)
    check_shape("row_len", row_len, (n_rows,))
    if row_len.stride(0) != 1 and n_rows > 1:
        raise ValueError(f"row_len must be contiguous, got stride {row_len.stride()}")
    n_extra = check_extra(extra_k, extra_v, extra_len, n_b, n_kv, d, q.dtype)
    has_extra = extra_k is not None
    dev = check_device(dict(q=q, k_pool=k_pool, v_pool=v_pool, chunk_slot=chunk_slot, token_ids=token_ids,
                            row_len=row_len, extra_k=extra_k, extra_v=extra_v, extra_len=extra_len))
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)

    # tokens a row can hold, known without a sync: splits come from shapes, never from row_len
    block_d, block_n, splits = tiles(q.dtype, d, dev, n_rows, token_ids.shape[1] + n_extra, block_n, num_splits)
    out, lse, mid_o, mid_lse = split_outputs(n_b, n_h, d, splits, q.dtype, dev)
    xk, xv, xlen = (extra_k, extra_v, extra_len) if has_extra else (k_pool, v_pool, row_len)
    _token_split_kernel[(n_rows, splits)](
        q, k_pool, v_pool, chunk_slot, token_ids, row_len, xk, xv, xlen, out, lse, mid_o, mid_lse,
        scale / LN2, n_kv, d, chunk, splits,
        q.stride(0), q.stride(1), *k_pool.stride()[:3], chunk_slot.stride(0), *token_ids.stride(),
        *(extra_k.stride()[:3] if has_extra else (0, 0, 0)), out.stride(0), out.stride(1),
        GROUP=n_h // n_kv, SPLIT=splits > 1, HAS_EXTRA=has_extra,
        DOT_FP32=interpreting() and q.dtype == torch.bfloat16, PRECISION=precision(q.dtype),
        BLOCK_G=max(16, next_pow2(n_h // n_kv)), BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4, num_stages=2,
    )
    reduce_splits(mid_o, mid_lse, out, lse, splits, block_d)
    return out, lse
