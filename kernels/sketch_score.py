"""Sketch scoring: each body token's upper bound of q.k and its estimated attention mass, from the
`token` policy's int8 low-rank sketches, Triton.

Spec: `sketch_ref.sketch_scores_ref`. Layouts:
    q [B, H, D]; basis [Hkv, D, r] fp32; levels [B, Hkv, r, N] int8; aux [B, Hkv, 2, N] (scale, res)
    ->  bound [B, Hkv, N] fp32, mass [B, Hkv, N] fp32 (or None without a softmax scaling).
Three launches (two without a scaling), all fp32:
  pass 0 (`_sketch_query_kernel`, grid B * Hkv): per head of the group q~ = P^T q, half_step * |q~|_1
    and ||q - P q~|| into small scratches (P is read once, not by every program of pass 1);
  pass 1 (`_sketch_bound_kernel`, grid (B * Hkv, splits)): a program owns one KV head of one sequence
    and a contiguous run of its tokens, BLOCK_N at a time, for all G query heads together (G padded to
    BLOCK_G >= 16 rows: tl.dot needs M, N, K >= 16). est = q~ . levels * scale is a [BLOCK_G, r] x
    [r, BLOCK_N] product in BLOCK_K slices of r (an FMA dot holds its whole K per thread); it writes
    the bound (max over the group) per token and, with a scaling, per head the split's running max and
    sum of exp(scaling * est) into a [2, B*Hkv, splits, BLOCK_G] scratch: one pass over the sketches;
  pass 2 (`_sketch_mass_kernel`, same grid): each program merges every split's statistics into its
    heads' log-sum-exp (splits <= BLOCK_S: one tile), recomputes est from levels and scale (r + 2 bytes
    a token; no [G, N] scratch) and writes the group's sum of exp(scaling * est - lse) per token.
Numerics: int8 levels are exact in fp32 and every dot is fp32 with input_precision="ieee" (TF32 would
round q~ and break the bound), so the kernel is the twin's arithmetic up to summation order and FMA
contraction, and its bound is >= q.k wherever the twin's is. Nothing is rounded outward here: the
margin for fp32 rounding is the quantizer's (`policies/token.py`: half_step = 1/2 + 2^-12, scale and
res rounded up). Per unit of |q~|_1 * scale the dot's worst-case rounding is (r + 1) * 127 * 2^-24,
inside the 2^-12 margin for r <= 30 (D = 64); typical (random-walk) error ~ sqrt(r) times less.
No bf16 tl.dot (q is upcast first), so triton#11584 (interpreter) does not arise. Scratch and outputs
come from torch's caching allocator; splits come from shapes: no host sync.

To measure on GPU: BLOCK_N, BLOCK_K, num_warps/num_stages, the split heuristic; recomputing est in
pass 2 vs storing it; an exact tensor-core product (int8 levels are exact in tf32/fp16: q~ in two or
three 16/19-bit parts) for the FMA-bound dot.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import FLOATS, check_device, check_dtype, check_last_contiguous, check_shape, interpreting
from ._launch import next_pow2

__all__ = ["sketch_scores_triton"]

_MAX_SPLITS = 128  # BLOCK_S of pass 2: every split's statistics in one tile
_STAGES = 2  # num_stages of every pass (the compile check builds the same)


@triton.jit
def _sketch_query_kernel(
    Q, P, QL, QT, n_kv, head_dim, rank, half_step, s_qb, s_qh, s_pk, s_pd, s_pr,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Pass 0, one program per (sequence, KV head): q~ = P^T q per head of the group into
    QL [B*Hkv, BLOCK_G, BLOCK_R] (zeros past GROUP and rank), half_step * |q~|_1 and ||q - P q~||
    into QT [B*Hkv, 2, BLOCK_G]."""
    pid = tl.program_id(0)
    b = pid // n_kv
    kvh = pid % n_kv
    offs_g = tl.arange(0, BLOCK_G)
    offs_r = tl.arange(0, BLOCK_R)
    offs_e = tl.arange(0, 32)
    g_ok = offs_g < GROUP
    r_ok = offs_r < rank
    q_row = Q + b * s_qb + (kvh * GROUP + offs_g)[:, None] * s_qh  # [BLOCK_G, 1]
    p_row = P + kvh * s_pk + offs_r[None, :] * s_pr  # P[kvh]: [D, r]
    # 32-wide slices of D, in run-time loops: unrolled, the second loop's loads of P merge with the
    # first's and all of P [D, r] stays live (shared memory past sm_89's limit at D = 256)
    q_low = tl.zeros([BLOCK_G, BLOCK_R], tl.float32)
    for d0 in range(0, BLOCK_D, 32):
        e_ok = (d0 + offs_e) < head_dim
        q_e = tl.load(q_row + d0 + offs_e[None, :], mask=g_ok[:, None] & e_ok[None, :], other=0.0)
        p_e = tl.load(p_row + (d0 + offs_e)[:, None] * s_pd, mask=e_ok[:, None] & r_ok[None, :], other=0.0)
        q_low += tl.dot(q_e.to(tl.float32), p_e, input_precision="ieee")  # [BLOCK_G, BLOCK_R]
    res_sq = tl.zeros([BLOCK_G], tl.float32)
    for d0 in range(0, BLOCK_D, 32):
        e_ok = (d0 + offs_e) < head_dim
        q_e = tl.load(q_row + d0 + offs_e[None, :], mask=g_ok[:, None] & e_ok[None, :], other=0.0)
        p_e = tl.load(p_row + (d0 + offs_e)[:, None] * s_pd, mask=e_ok[:, None] & r_ok[None, :], other=0.0)
        diff = q_e.to(tl.float32) - tl.dot(q_low, tl.trans(p_e), input_precision="ieee")
        res_sq += tl.sum(diff * diff, 1)
    tl.store(QL + (pid * BLOCK_G + offs_g)[:, None] * BLOCK_R + offs_r[None, :], q_low)
    tl.store(QT + pid * 2 * BLOCK_G + offs_g, half_step * tl.sum(tl.abs(q_low), 1))
    tl.store(QT + (pid * 2 + 1) * BLOCK_G + offs_g, tl.sqrt(res_sq))


@triton.jit
def _low_rank_dot(QL, LV, pid, lv_off, rank, s_lr, offs_n, n_ok, BLOCK_G: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """q~ . levels [BLOCK_G, BLOCK_N] fp32 for one tile of tokens, BLOCK_K levels at a time (an FMA
    dot holds its whole K per thread: one K = r dot spills at D >= 128). int8 is exact in fp32."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_k = tl.arange(0, BLOCK_K)
    est = tl.zeros([BLOCK_G, BLOCK_N], tl.float32)
    for k0 in tl.static_range(0, BLOCK_R, BLOCK_K):
        q_k = tl.load(QL + (pid * BLOCK_G + offs_g)[:, None] * BLOCK_R + k0 + offs_k[None, :])
        k_ok = (k0 + offs_k) < rank
        lv = tl.load(LV + lv_off + (k0 + offs_k)[:, None] * s_lr + offs_n[None, :],
                     mask=k_ok[:, None] & n_ok[None, :], other=0)  # fmt: skip
        est += tl.dot(q_k, lv.to(tl.float32), input_precision="ieee")
    return est


@triton.jit
def _sketch_bound_kernel(
    QL, QT, LV, AUX, BOUND, MID,
    n_kv, n_tokens, rank, tiles_per_split, n_splits, scaling,
    s_lb, s_lh, s_lr, s_ab, s_ah, s_a2, s_ob, s_oh,
    GROUP: tl.constexpr, HAS_MASS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Pass 1: the bound per token, and per head the split's softmax statistics (HAS_MASS)."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // n_kv
    kvh = pid % n_kv
    offs_g = tl.arange(0, BLOCK_G)
    g_ok = offs_g < GROUP
    half = tl.load(QT + pid * 2 * BLOCK_G + offs_g)  # half_step * |q~|_1 [BLOCK_G]
    q_res = tl.load(QT + (pid * 2 + 1) * BLOCK_G + offs_g)  # ||q_res|| [BLOCK_G]
    lv_off = b * s_lb + kvh * s_lh
    a_row = AUX + b * s_ab + kvh * s_ah
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # per head: running max of scaling * est
    l_i = tl.zeros([BLOCK_G], tl.float32)  # and sum of exp(scaling * est - m_i)
    start = split * tiles_per_split * BLOCK_N  # < n_tokens: every split owns a token
    for t in range(0, tl.minimum(tiles_per_split, tl.cdiv(n_tokens - start, BLOCK_N))):
        offs_n = start + t * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_tokens
        scale = tl.load(a_row + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        res = tl.load(a_row + s_a2 + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        est = _low_rank_dot(QL, LV, pid, lv_off, rank, s_lr, offs_n, n_ok, BLOCK_G, BLOCK_N, BLOCK_R, BLOCK_K)
        est = est * scale[None, :]  # q~ . k^ [BLOCK_G, BLOCK_N]
        bound = est + half[:, None] * scale[None, :] + q_res[:, None] * res[None, :]
        bound = tl.where(g_ok[:, None], bound, float("-inf"))  # padded heads must not win the max
        tl.store(BOUND + b * s_ob + kvh * s_oh + offs_n, tl.max(bound, 0), mask=n_ok)
        if HAS_MASS:
            x = tl.where(n_ok[None, :], est * scaling, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(x, 1))  # finite: a tile that runs holds a token
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
            m_i = m_new
    if HAS_MASS:
        # MID [2, B*Hkv, n_splits, BLOCK_G] fp32 contiguous: (max, sum of exp) per split and head
        row = MID + (pid * n_splits + split) * BLOCK_G + offs_g
        tl.store(row, m_i)
        tl.store(row + tl.num_programs(0) * n_splits * BLOCK_G, l_i)


@triton.jit
def _sketch_mass_kernel(
    QL, LV, AUX, MID, MASS,
    n_kv, n_tokens, rank, tiles_per_split, n_splits, scaling,
    s_lb, s_lh, s_lr, s_ab, s_ah, s_ob, s_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Pass 2: every split's statistics -> each head's lse; then the mass per token."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // n_kv
    kvh = pid % n_kv
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    g_ok = offs_g < GROUP
    mid = MID + (pid * n_splits + offs_s)[:, None] * BLOCK_G + offs_g[None, :]  # [BLOCK_S, BLOCK_G]
    s_ok = offs_s[:, None] < n_splits
    m_s = tl.load(mid, mask=s_ok, other=float("-inf"))
    l_s = tl.load(mid + tl.num_programs(0) * n_splits * BLOCK_G, mask=s_ok, other=0.0)
    m = tl.max(m_s, 0)  # finite, padded heads too (their est is 0)
    lse = m + tl.log(tl.sum(l_s * tl.exp(m_s - m[None, :]), 0))  # [BLOCK_G]
    lv_off = b * s_lb + kvh * s_lh
    a_row = AUX + b * s_ab + kvh * s_ah
    start = split * tiles_per_split * BLOCK_N
    for t in range(0, tl.minimum(tiles_per_split, tl.cdiv(n_tokens - start, BLOCK_N))):
        offs_n = start + t * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_tokens
        scale = tl.load(a_row + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        est = _low_rank_dot(QL, LV, pid, lv_off, rank, s_lr, offs_n, n_ok, BLOCK_G, BLOCK_N, BLOCK_R, BLOCK_K)
        est = est * scale[None, :]
        p = tl.where(g_ok[:, None], tl.exp(est * scaling - lse[:, None]), 0.0)
        tl.store(MASS + b * s_ob + kvh * s_oh + offs_n, tl.sum(p, 0), mask=n_ok)


def _tiles(block_r: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) of passes 1 and 2: no spills on sm_89/sm_90 (ptxas:
    tests/kernels/test_kernel_compile.py). BLOCK_K = 32 spills pass 1 with statistics at r > 64, and
    so does BLOCK_R = 128 at 4 warps on sm_90 (8 bytes). Speed is to be measured on a GPU."""
    return 64, 16, 4 if block_r <= 64 else 8


def _num_splits(device: torch.device, n_programs: int, n_tiles: int) -> int:
    """Splits per row so that ~2 waves of programs fill the GPU, each split >= 4 tiles, at most
    _MAX_SPLITS (pass 2 merges every split's statistics in one tile)."""
    if interpreting() or device.type != "cuda":
        sms = 1
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, max(1, n_programs))
    return int(max(1, min(want, triton.cdiv(n_tiles, 4), _MAX_SPLITS)))


def _check_number(name: str, x, allow_none: bool) -> None:
    if x is None and allow_none:
        return
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a real number{' or None' if allow_none else ''}, got {type(x).__name__}")
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")


def sketch_scores_triton(
    q: torch.Tensor,
    basis: torch.Tensor,
    levels: torch.Tensor,
    aux: torch.Tensor,
    scaling: float | None,
    half_step: float,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton twin of `sketch_scores_ref` (same arguments and results; see the module doc).

    levels and aux may be views of longer preallocated buffers (only their last stride must be 1).
    num_splits / block_n override the heuristics (tests, tuning).
    """
    check_dtype("q", q, FLOATS)
    check_shape("q", q, (None, None, None))
    check_last_contiguous("q", q)
    b, h, d = q.shape
    check_dtype("basis", basis, (torch.float32,))
    check_shape("basis", basis, (None, d, None))  # any strides: each program reads it once
    n_kv, _, rank = basis.shape
    if n_kv == 0 or h % n_kv:
        raise ValueError(f"query heads ({h}) must be a multiple of the basis' KV heads ({n_kv})")
    if rank < 1:
        raise ValueError("basis must have rank >= 1 (shape [Hkv, D, r])")
    check_dtype("levels", levels, (torch.int8,))
    check_shape("levels", levels, (b, n_kv, rank, None))
    check_last_contiguous("levels", levels)
    n = levels.shape[3]
    check_dtype("aux", aux, FLOATS)
    check_shape("aux", aux, (b, n_kv, 2, n))
    check_last_contiguous("aux", aux)
    _check_number("scaling", scaling, allow_none=True)
    _check_number("half_step", half_step, allow_none=False)
    if half_step < 0:
        raise ValueError(f"half_step must be >= 0, got {half_step}")
    dev = check_device(dict(q=q, basis=basis, levels=levels, aux=aux))
    bound = torch.empty((b, n_kv, n), dtype=torch.float32, device=dev)
    mass = None if scaling is None else torch.empty((b, n_kv, n), dtype=torch.float32, device=dev)
    if n == 0 or b == 0:
        return bound, mass

    group = h // n_kv
    block_g, block_r = max(16, next_pow2(group)), max(16, next_pow2(rank))
    tile_n, block_k, num_warps = _tiles(block_r)
    block_n = block_n or tile_n
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    n_tiles = triton.cdiv(n, block_n)
    splits = num_splits or _num_splits(dev, b * n_kv, n_tiles)
    if not 1 <= splits <= _MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {_MAX_SPLITS}], got {splits}")
    per_split = triton.cdiv(n_tiles, splits)
    splits = triton.cdiv(n_tiles, per_split)  # no split without tokens
    rows = b * n_kv
    ql = torch.empty((rows, block_g, block_r), dtype=torch.float32, device=dev)
    qt = torch.empty((rows, 2, block_g), dtype=torch.float32, device=dev)
    _sketch_query_kernel[(rows,)](
        q, basis, ql, qt, n_kv, d, rank, float(half_step), q.stride(0), q.stride(1), *basis.stride(),
        GROUP=group, BLOCK_G=block_g, BLOCK_D=max(32, next_pow2(d)), BLOCK_R=block_r, num_warps=4,
        num_stages=_STAGES,
    )
    has_mass = scaling is not None
    mid = torch.empty((2, rows, splits, block_g) if has_mass else (1,), dtype=torch.float32, device=dev)
    shared = (n_kv, n, rank, per_split, splits, float(scaling or 0.0), *levels.stride()[:3])
    tiles = dict(GROUP=group, BLOCK_G=block_g, BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_K=block_k,
                 num_warps=num_warps, num_stages=_STAGES)  # fmt: skip
    _sketch_bound_kernel[(rows, splits)](
        ql, qt, levels, aux, bound, mid, *shared, *aux.stride()[:3], bound.stride(0), bound.stride(1),
        HAS_MASS=has_mass, **tiles,
    )
    if has_mass:
        _sketch_mass_kernel[(rows, splits)](
            ql, levels, aux, mid, mass, *shared, aux.stride(0), aux.stride(1), mass.stride(0), mass.stride(1),
            BLOCK_S=_MAX_SPLITS, **tiles,
        )
    return bound, mass
