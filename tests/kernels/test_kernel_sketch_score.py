"""Sketch scoring (the `token` policy's int8 low-rank sketches): the Triton kernel (interpreted on CPU;
compiled on a GPU with OFFLOAD_KERNEL_DEVICE=cuda TRITON_INTERPRET=0) against its twin, its bounds
against every key (invariant 5), its mass against a softmax; and the twin against the formula
TokenSketches.bound_and_mass ran before it moved to offload/kernels/sketch_ref.py, bit for bit."""

import os

import pytest
import torch

import offload.kernels.dispatch as K
from offload.kernels.sketch_ref import sketch_scores_ref
from offload.kernels.sketch_score import sketch_scores_triton as _kernel
from offload.sparse.policies.token import Token
from offload.sparse.policy import Geometry

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DEVICE = torch.device(os.environ.get("OFFLOAD_KERNEL_DEVICE", "cpu"))
HALF_STEP = 0.5 + 2**-12  # the token policy's quantizer: half a level step, plus fp32 division error
CHUNK = 8


def sketch_scores_triton(*args, **kw):
    """The kernel on DEVICE (inputs moved there), its results back on the CPU."""
    moved = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    bound, mass = _kernel(*moved, **kw)
    return bound.cpu(), None if mass is None else mass.cpu()


def make_case(b, n_kv, group, d, rank, n, kv_dtype=F32, q_dtype=F32, seed=0):
    """q [B, H, D], keys [B, Hkv, N, D] and the policy's sketches of them: (state, basis [Hkv, D, r],
    levels [B, Hkv, r, N], aux [B, Hkv, 2, N]), levels/aux views of the state's longer buffers."""
    g = torch.Generator().manual_seed(seed)
    n_pad = -(-max(n, 1) // CHUNK) * CHUNK
    keys = torch.randn(b, n_kv, n_pad, d, generator=g) * torch.linspace(0.3, 2, d)
    keys += torch.randn(1, n_kv, 1, d, generator=g)  # a shared mean direction, as real keys have
    q = (torch.randn(b, n_kv * group, d, generator=g) * 2).to(q_dtype)
    geo = Geometry(1, b, n_kv, d, CHUNK, torch.device("cpu"), capacity=n_pad // CHUNK + 3, kv_dtype=kv_dtype)
    state = Token(rank=rank).start(geo)
    state.add(0, 0, keys.reshape(b * n_kv, n_pad, d))
    return q, keys[:, :, :n], state, state.basis.basis[0], state.lo[0, ..., :n], state.aux[0, ..., :n]


def dequantized(basis, levels, aux, q):
    """Keys [B, Hkv, N, D] (float64) whose sketches are exactly these: P (levels * scale) plus a
    residual orthogonal to P's columns with norm exactly res, along the residual of the group's first
    query head: for that head q.k = q~ . k^ + ||q_res|| res, and the bound exceeds it by the
    half-step term alone (the tightest keys these sketches allow)."""
    p = basis.double()  # [Hkv, D, r]
    scale, res = aux.double().unbind(2)  # [B, Hkv, N] each
    low = torch.einsum("kdr,bkrn->bknd", p, levels.double() * scale[:, :, None])
    b, n_kv = levels.shape[:2]
    u = q.double().reshape(b, n_kv, -1, q.shape[-1])[:, :, :1]  # [B, Hkv, 1, D]
    for _ in range(2):  # project out P twice: orthogonal to float64 precision
        u = u - torch.einsum("bknr,kdr->bknd", torch.einsum("bknd,kdr->bknr", u, p), p)
    return low + u / u.norm(dim=-1, keepdim=True) * res[..., None]


def best_dot(q, keys):
    """max over the group of q.k per token: q [B, H, D], keys [B, Hkv, N, D] -> [B, Hkv, N] float64."""
    b, h, d = q.shape
    n_kv = keys.shape[1]
    return torch.einsum("bkgd,bknd->bkgn", q.double().reshape(b, n_kv, h // n_kv, d), keys.double()).amax(2)


def _cases():
    """Every group x head dim; rank (8 .. D/2 - 4), batch, KV heads, tokens, dtypes, scaling, splits
    and tile rotate. N is never a multiple of the tile."""
    cases, i = [], 0
    for group in (1, 3, 4, 8):
        for d in (64, 128, 256):
            rank = (8, d // 4 + 5, d // 2 - 4)[i % 3]
            splits, block_n = ((None, None), (3, 16), (2, 32), (5, 16))[i % 4]
            cases.append((1 + i % 2, 1 + (i // 2) % 2, group, d, rank, (23, 70, 131, 5)[i % 4],
                          (BF16, F32)[i % 2], (F32, F16, BF16)[i % 3], (None, d**-0.5)[(i // 3) % 2],
                          splits, block_n))  # fmt: skip
            i += 1
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}k{c[1]}g{c[2]}d{c[3]}r{c[4]}n{c[5]}" for c in CASES])
def test_matches_twin_and_bounds_every_key(case):
    b, n_kv, group, d, rank, n, kv_dtype, q_dtype, scaling, splits, block_n = case
    q, keys, _, basis, levels, aux = make_case(b, n_kv, group, d, rank, n, kv_dtype, q_dtype)
    assert aux.dtype == (F16 if kv_dtype == BF16 else F32) and not levels.is_contiguous()
    kw = dict(num_splits=splits, block_n=block_n)
    bound, mass = sketch_scores_triton(q, basis, levels, aux, scaling, HALF_STEP, **kw)
    want_bound, want_mass = sketch_scores_ref(q, basis, levels, aux, scaling, HALF_STEP)
    assert bound.dtype == F32 and bound.shape == (b, n_kv, n)
    torch.testing.assert_close(bound, want_bound, rtol=1e-5, atol=1e-5 * float(want_bound.abs().max()))
    # invariant 5, against the original keys and against keys the sketches describe exactly
    tol = 1e-5 * float(q.float().norm(dim=-1).max() * keys.norm(dim=-1).max())
    for k in (keys, dequantized(basis, levels, aux, q)):
        assert (bound.double() >= best_dot(q, k) - tol).all(), (bound.double() - best_dot(q, k)).min()
    if scaling is None:
        assert mass is None and want_mass is None
        return
    assert mass.dtype == F32 and mass.shape == (b, n_kv, n)
    torch.testing.assert_close(mass, want_mass, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(mass.sum(-1), torch.full((b, n_kv), float(group)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("splits", [1, 2, 7])
def test_split_count_changes_nothing_but_rounding(splits):
    """The bound per token does not depend on the split; the mass only through the lse's rounding."""
    q, _, _, basis, levels, aux = make_case(2, 2, 3, 64, 28, 150, BF16)
    one = sketch_scores_triton(q, basis, levels, aux, 0.125, HALF_STEP, num_splits=1, block_n=16)
    many = sketch_scores_triton(q, basis, levels, aux, 0.125, HALF_STEP, num_splits=splits, block_n=16)
    assert torch.equal(one[0], many[0])
    torch.testing.assert_close(one[1], many[1], rtol=1e-5, atol=1e-8)


def test_views_of_the_preallocated_buffers_equal_contiguous_copies():
    q, _, _, basis, levels, aux = make_case(2, 2, 4, 64, 20, 45, F32)
    assert levels.stride(0) != levels.shape[1] * levels.shape[2] * levels.shape[3]
    got = sketch_scores_triton(q, basis, levels, aux, 0.125, HALF_STEP)
    want = sketch_scores_triton(q, basis.contiguous(), levels.contiguous(), aux.contiguous(), 0.125, HALF_STEP)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # a basis with column-major strides (as QR returns) is read the same
    basis_t = basis.transpose(1, 2).contiguous().transpose(1, 2)
    got_t = sketch_scores_triton(q, basis_t, levels, aux, 0.125, HALF_STEP)
    assert torch.equal(got[0], got_t[0])


def test_negative_bounds_are_not_masked_by_padded_heads():
    """G = 3 pads to 16 rows of zeros (bound 0): they must not win the max over the group."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.rand(2, 64, 8, generator=g) + 1)[0].abs()  # q~ > 0 for q > 0
    q = torch.rand(1, 6, 64, generator=g) + 0.5
    levels = torch.full((1, 2, 8, 20), -127, dtype=torch.int8)
    aux = torch.stack([torch.full((1, 2, 20), 0.01), torch.zeros(1, 2, 20)], 2)
    bound, _ = sketch_scores_triton(q, basis, levels, aux, None, HALF_STEP)
    assert (bound < 0).all()
    torch.testing.assert_close(bound, sketch_scores_ref(q, basis, levels, aux, None, HALF_STEP)[0])


@pytest.mark.parametrize("n", [0, 1])
def test_no_token_and_one_token(n):
    q, _, _, basis, levels, aux = make_case(2, 2, 4, 64, 12, n, BF16)
    bound, mass = sketch_scores_triton(q, basis, levels, aux, 0.125, HALF_STEP)
    assert bound.shape == mass.shape == (2, 2, n)
    if n:  # one token holds all of every head's mass
        torch.testing.assert_close(mass, torch.full((2, 2, 1), 4.0))
        torch.testing.assert_close(bound, sketch_scores_ref(q, basis, levels, aux, 0.125, HALF_STEP)[0])


def test_bad_inputs_raise():
    q, _, _, basis, levels, aux = make_case(2, 2, 3, 64, 12, 10, F32)
    strided = levels.transpose(-1, -2).contiguous().transpose(-1, -2)
    for err, match, args, kw in [
        (TypeError, "levels", (q, basis, levels.float(), aux), {}),
        (TypeError, "aux", (q, basis, levels, aux.to(torch.int32)), {}),
        (TypeError, "basis", (q, basis.half(), levels, aux), {}),
        (TypeError, "q must", (q.to(torch.int8), basis, levels, aux), {}),
        (ValueError, "aux must have shape", (q, basis, levels, aux[..., :5]), {}),
        (ValueError, "levels must have shape", (q, basis, levels[:, :, :4], aux), {}),
        (ValueError, "basis must have shape", (q, basis[:, :32], levels, aux), {}),
        (ValueError, "multiple", (q[:, :5], basis, levels[:, :1], aux[:, :1]), {}),
        (ValueError, "levels must be contiguous", (q, basis, strided, aux), {}),
        (ValueError, "num_splits", (q, basis, levels, aux), dict(num_splits=500)),
        (ValueError, "block_n", (q, basis, levels, aux), dict(block_n=24)),
    ]:  # fmt: skip
        with pytest.raises(err, match=match):
            sketch_scores_triton(*args, 0.125, HALF_STEP, **kw)
    with pytest.raises(TypeError, match="scaling"):
        sketch_scores_triton(q, basis, levels, aux, "0.125", HALF_STEP)
    with pytest.raises(ValueError, match="half_step"):
        sketch_scores_triton(q, basis, levels, aux, 0.125, -0.5)


# --- the twin is the formula TokenSketches.bound_and_mass ran inline before (CPU results unchanged)


def _old_bound_and_mass(state, layer, q, n_chunks, scaling, per_token=False):
    """A verbatim copy of TokenSketches.bound_and_mass before it called kernels.dispatch."""
    g, m, c = state.geometry, n_chunks, state.geometry.chunk
    b, h, d = q.shape
    qg = q.float().reshape(b, g.n_kv, h // g.n_kv, d)
    p = state.basis.basis[layer]
    q_low = torch.matmul(qg, p)
    q_res = (qg - torch.matmul(q_low, p.transpose(-1, -2))).norm(dim=-1, keepdim=True)
    n = m * c
    levels = state.lo[layer, :, :, :, :n].float()
    aux = state.aux[layer, :, :, :, :n].float()
    scale, res = aux[:, :, :1], aux[:, :, 1:]
    est = torch.matmul(q_low, levels) * scale
    half_steps = HALF_STEP * q_low.abs().sum(-1, keepdim=True)
    bound = torch.addcmul(torch.addcmul(est, half_steps, scale), q_res, res).amax(2)
    if not per_token:
        bound = bound.view(b, g.n_kv, m, c).amax(-1)
    if scaling is None:
        return bound, None
    mass = torch.softmax(est * scaling, dim=-1).sum(2)
    return bound, mass if per_token else mass.view(b, g.n_kv, m, c).sum(-1)


@pytest.mark.parametrize("b,n_kv,group,d,rank,kv_dtype", [
    (1, 3, 3, 64, 28, F32), (2, 2, 1, 64, 8, BF16), (1, 1, 4, 128, 60, BF16), (2, 1, 8, 32, 12, F32),
])  # fmt: skip
def test_twin_is_bit_identical_to_the_old_inline_formula(b, n_kv, group, d, rank, kv_dtype):
    m = 9
    q, _, state, basis, levels, aux = make_case(b, n_kv, group, d, rank, m * CHUNK, kv_dtype, seed=3)
    for scaling in (None, d**-0.5, 0.3):
        old = _old_bound_and_mass(state, 0, q, m, scaling, per_token=True)
        for new in (sketch_scores_ref(q, basis, levels, aux, scaling, HALF_STEP),
                    K.sketch_scores(q, basis, levels, aux, scaling, HALF_STEP)):  # fmt: skip
            assert torch.equal(new[0], old[0])
            assert (new[1] is None) if scaling is None else torch.equal(new[1], old[1])
        for per_token in (False, True):  # the policy itself, through dispatch
            want = _old_bound_and_mass(state, 0, q, m, scaling, per_token)
            got = state.bound_and_mass(0, q, m, scaling, per_token)
            assert torch.equal(got[0], want[0])
            assert (got[1] is None) if scaling is None else torch.equal(got[1], want[1])
