"""Chunk scoring: an upper bound of each chunk's best q.k per KV head, from its abstract, Triton.

Spec: `reference.chunk_score_ref`. Layouts:
    q [B, H, D]; Quest: kmin, kmax [Bk, Hkv, n, D] (Bk = 1 or B)  ->  scores [B, Hkv, n] fp32.
    Low rank: basis [Hkv, D, r] orthonormal columns; kmin, kmax [Bk, Hkv, n, r]; res_max [Bk, Hkv, n].
The per-channel bound sum_i max(q_i lo_i, q_i hi_i) equals relu(q).hi + min(q, 0).lo, so a group's
bounds for BLOCK_C chunks are two tl.dot of [BLOCK_G, K] x [K, BLOCK_C] (K = D, or r after projecting
q once per program); the max over the group's heads follows. Everything is fp32 with
input_precision="ieee": TF32 would round q and the abstracts and break the bound (invariant 5).
Abstracts kept in fp16/bf16 are the builder's concern: it must round min down and max up.
Scores are unscaled q.k (the softmax scale does not change a ranking). Top-k: torch.topk
(`reference.top_chunks_ref`); measure on GPU before replacing it.

To measure on GPU: BLOCK_C and num_warps (bench/kernel_speed.py does not cover scoring yet).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import FLOATS, check_device, check_dtype, check_last_contiguous, check_shape, next_pow2

__all__ = ["chunk_score_triton"]


@triton.jit
def _chunk_score_kernel(
    Q, LO, HI, P, RES, OUT,
    n_kv, n_chunks, head_dim, rank,
    s_qb, s_qh, s_ab, s_ah, s_an, s_pk, s_pd, s_pr, s_rb, s_rh, s_ob, s_oh,
    GROUP: tl.constexpr, LOW_RANK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n_kv
    kvh = pid % n_kv
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    g_ok = offs_g < GROUP
    d_ok = offs_d < head_dim
    c_ok = offs_c < n_chunks
    head = kvh * GROUP + offs_g
    q_row = Q + b * s_qb + head[:, None] * s_qh  # [BLOCK_G, 1] pointers
    if LOW_RANK:
        offs_k = tl.arange(0, BLOCK_R)
        k_ok = offs_k < rank
        # q~ = P^T q per head, then ||q - P q~||, over 32-wide slices of D: one [BLOCK_G, D] x [D, r]
        # fp32 dot spills registers at D >= 128 (ptxas, sm_89); slices keep the tiles small
        offs_e = tl.arange(0, 32)
        p_row = P + kvh * s_pk + offs_k[None, :] * s_pr  # basis P[kvh]: [D, r]
        q = tl.zeros([BLOCK_G, BLOCK_R], tl.float32)
        for d0 in tl.static_range(0, BLOCK_D, 32):
            e_ok = (d0 + offs_e) < head_dim
            q_e = tl.load(q_row + d0 + offs_e[None, :], mask=g_ok[:, None] & e_ok[None, :], other=0.0)
            p_e = tl.load(p_row + (d0 + offs_e)[:, None] * s_pd, mask=e_ok[:, None] & k_ok[None, :], other=0.0)
            q += tl.dot(q_e.to(tl.float32), p_e.to(tl.float32), input_precision="ieee")  # [BLOCK_G, BLOCK_R]
        res_sq = tl.zeros([BLOCK_G], tl.float32)
        for d0 in tl.static_range(0, BLOCK_D, 32):
            e_ok = (d0 + offs_e) < head_dim
            q_e = tl.load(q_row + d0 + offs_e[None, :], mask=g_ok[:, None] & e_ok[None, :], other=0.0)
            p_e = tl.load(p_row + (d0 + offs_e)[:, None] * s_pd, mask=e_ok[:, None] & k_ok[None, :], other=0.0)
            diff = q_e.to(tl.float32) - tl.dot(q, tl.trans(p_e.to(tl.float32)), input_precision="ieee")
            res_sq += tl.sum(diff * diff, 1)
        q_res_norm = tl.sqrt(res_sq)  # [BLOCK_G]
    else:
        offs_k = offs_d
        k_ok = d_ok
        q = tl.load(q_row + offs_d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    # abstracts: [BLOCK_C, K] tiles of lo/hi, K = D or r
    a_off = b * s_ab + kvh * s_ah + offs_c[:, None] * s_an + offs_k[None, :]
    a_mask = c_ok[:, None] & k_ok[None, :]
    lo = tl.load(LO + a_off, mask=a_mask, other=0.0).to(tl.float32)
    hi = tl.load(HI + a_off, mask=a_mask, other=0.0).to(tl.float32)
    bound = tl.dot(tl.maximum(q, 0.0), tl.trans(hi), input_precision="ieee")  # [BLOCK_G, BLOCK_C]
    bound += tl.dot(tl.minimum(q, 0.0), tl.trans(lo), input_precision="ieee")
    if LOW_RANK:
        res = tl.load(RES + b * s_rb + kvh * s_rh + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        bound += q_res_norm[:, None] * res[None, :]
    bound = tl.where(g_ok[:, None], bound, float("-inf"))  # padded heads must not win the max
    tl.store(OUT + b * s_ob + kvh * s_oh + offs_c, tl.max(bound, 0), mask=c_ok)


def _tiles(block_d: int, low_rank: bool) -> tuple[int, int]:
    """(BLOCK_C, num_warps): two [BLOCK_C, D] fp32 tiles stay in registers; the low-rank variant
    spills at 4 warps and not at 8 (ptxas, sm_89; test_kernel_compile.py)."""
    return max(16, min(64, 8192 // block_d)), 8 if low_rank else 4


def chunk_score_triton(
    q: torch.Tensor,
    kmin: torch.Tensor,
    kmax: torch.Tensor,
    basis: torch.Tensor | None = None,
    res_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton twin of `chunk_score_ref`: q [B, H, D] -> scores [B, Hkv, n] fp32 (see the module doc).

    kmin, kmax may be views of a larger preallocated buffer (only their last stride must be 1);
    Bk = 1 broadcasts one abstract over the batch.
    """
    check_dtype("q", q, FLOATS)
    check_shape("q", q, (None, None, None))
    check_last_contiguous("q", q)
    b, h, d = q.shape
    check_dtype("kmin", kmin, FLOATS)
    check_shape("kmin", kmin, (None, None, None, None))
    bk, n_kv, n, width = kmin.shape
    low_rank = basis is not None
    if low_rank != (res_max is not None):
        raise ValueError("basis and res_max go together: give both (low-rank abstracts) or neither (Quest)")
    if bk not in (1, b):
        raise ValueError(f"abstracts' batch must be 1 or {b} (q's), got {bk}")
    if h % n_kv:
        raise ValueError(f"query heads ({h}) must be a multiple of KV heads ({n_kv})")
    if low_rank:
        check_dtype("basis", basis, FLOATS)
        check_shape("basis", basis, (n_kv, d, width))  # any strides: it is read once per program
        check_dtype("res_max", res_max, FLOATS)
        check_shape("res_max", res_max, (bk, n_kv, n))
        check_last_contiguous("res_max", res_max)
    elif width != d:
        raise ValueError(f"Quest abstracts must have the head dim {d} last, got kmin {list(kmin.shape)}")
    for name, t in (("kmin", kmin), ("kmax", kmax)):
        check_dtype(name, t, FLOATS)
        check_shape(name, t, (bk, n_kv, n, width))
        check_last_contiguous(name, t)
    if kmax.stride() != kmin.stride():
        raise ValueError(f"kmin and kmax must share strides, got {kmin.stride()} and {kmax.stride()}")
    dev = check_device(dict(q=q, kmin=kmin, kmax=kmax, basis=basis, res_max=res_max))
    out = torch.empty((b, n_kv, n), dtype=torch.float32, device=dev)
    if n == 0 or b == 0:
        return out

    block_d = max(16, next_pow2(d))
    block_c, num_warps = _tiles(block_d, low_rank)
    s_ab = 0 if bk == 1 else kmin.stride(0)  # Bk = 1: every sequence reads the same abstracts
    if low_rank:
        s_rb = 0 if bk == 1 else res_max.stride(0)
        p_args = (basis, res_max)
        p_strides = (*basis.stride(), s_rb, res_max.stride(1))
    else:
        p_args = (kmin, kmin)  # unused pointers
        p_strides = (0, 0, 0, 0, 0)
    _chunk_score_kernel[(b * n_kv, triton.cdiv(n, block_c))](
        q, kmin, kmax, *p_args, out,
        n_kv, n, d, width,
        q.stride(0), q.stride(1), s_ab, kmin.stride(1), kmin.stride(2), *p_strides,
        out.stride(0), out.stride(1),
        GROUP=h // n_kv, LOW_RANK=low_rank, BLOCK_G=max(16, next_pow2(h // n_kv)), BLOCK_C=block_c,
        BLOCK_D=block_d, BLOCK_R=max(16, next_pow2(width)) if low_rank else 16,
        num_warps=num_warps,
    )
    return out
