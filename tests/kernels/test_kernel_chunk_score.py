"""Chunk scoring: the Triton kernel (interpreted on CPU; compiled on a GPU with
OFFLOAD_KERNEL_DEVICE=cuda TRITON_INTERPRET=0) against its reference, and its bounds against every key
of the chunk (invariant 5)."""

import os

import pytest
import torch

from offload.kernels.chunk_score import chunk_score_triton as _kernel
from offload.kernels.reference import chunk_score_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DEVICE = torch.device(os.environ.get("OFFLOAD_KERNEL_DEVICE", "cpu"))


def chunk_score_triton(*args, **kw):
    """The kernel on DEVICE (inputs moved there), its result back on the CPU."""
    moved = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    return _kernel(*moved, **{k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}).cpu()


def _round(x, dtype, down):
    """x in dtype, rounded outward (toward -inf if down, else +inf)."""
    r = x.to(dtype)
    away = torch.tensor(-torch.inf if down else torch.inf, dtype=dtype)
    wrong = r.float() > x if down else r.float() < x
    return torch.where(wrong, torch.nextafter(r, away), r)


def make_case(b, bk, n_kv, group, d, n, rank, q_dtype, a_dtype, chunk=8, seed=0):
    """q, real keys [Bk, Hkv, n, C, D] and abstracts (rank 0: Quest; else low rank via QR).
    Abstracts are rounded outward when stored in 16 bits, as the builder must."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(bk, n_kv, n, chunk, d, generator=g) + torch.randn(1, n_kv, 1, 1, d, generator=g)
    q = (torch.randn(b, n_kv * group, d, generator=g) * 2).to(q_dtype)
    if rank:
        basis = torch.linalg.qr(torch.randn(n_kv, d, rank, generator=g))[0]  # column-major strides
        proj = torch.einsum("bkncd,kdr->bkncr", keys, basis)
        res = (keys - torch.einsum("bkncr,kdr->bkncd", proj, basis)).norm(dim=-1).amax(3)
        lo, hi, extra = proj.amin(3), proj.amax(3), (basis,)
    else:
        lo, hi, extra = keys.amin(3), keys.amax(3), ()
    lo_r, hi_r = _round(lo, a_dtype, down=True), _round(hi, a_dtype, down=False)
    if rank:  # the residual norm rounds up as well
        extra = (extra[0], _round(res, a_dtype, down=False))
    return q, keys, (lo_r, hi_r, *extra)


def _cases():
    """Every group x head dim, Quest and low rank; batch, shared abstracts and dtypes rotate."""
    cases, i = [], 0
    for group in (1, 3, 4, 8):
        for d in (64, 128, 256):
            for rank in (0, (8, 20, 32)[i % 3]):
                b = 1 + i % 2
                bk = 1 if i % 3 == 0 else b
                cases.append((b, bk, 1 + (i // 2) % 2, group, d, (23, 70, 5)[i % 3], rank,
                              (F32, F16, BF16)[i % 3], (F32, F32, F16, BF16)[i % 4]))
                i += 1
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}{c[1]}g{c[3]}d{c[4]}r{c[6]}" for c in CASES])
def test_matches_reference_and_bounds_every_key(case):
    b, bk, n_kv, group, d, n, rank, q_dtype, a_dtype = case
    q, keys, abstract = make_case(*case)
    got = chunk_score_triton(q, *abstract)
    want = chunk_score_ref(q, *abstract)
    assert got.dtype == F32 and got.shape == (b, n_kv, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    qk = torch.einsum("bkgd,bkncd->bkgnc", q.float().reshape(b, n_kv, group, d), keys.expand(b, -1, -1, -1, -1))
    best = qk.amax(dim=(2, 4))
    assert (got >= best - 1e-5 * (1 + best.abs()) - 1e-4).all(), (got - best).min()


def test_views_of_a_preallocated_abstract_buffer():
    """The engine keeps [1, Hkv, max_chunks, D] buffers and scores the first n chunks of them."""
    q, _, (lo, hi) = make_case(2, 1, 2, 4, 64, 40, 0, F16, F32)
    buf = torch.zeros(2, 1, 2, 64, 64)
    buf[0, :, :, :40], buf[1, :, :, :40] = lo, hi
    got = chunk_score_triton(q, buf[0, :, :, :40], buf[1, :, :, :40])
    torch.testing.assert_close(got, chunk_score_ref(q, lo, hi), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rank", [0, 8])
def test_negative_bounds_are_not_masked_by_padded_heads(rank):
    """G = 3 pads to 16 rows of zeros, whose bound is 0: they must not win the max over the group."""
    g = torch.Generator().manual_seed(0)
    q = torch.rand(1, 6, 64, generator=g) + 0.5
    lo = -5 - torch.rand(1, 2, 20, rank or 64, generator=g)
    args = (q, lo, lo + 1)
    if rank:  # a non-negative basis keeps the projected q positive (compared with the reference only)
        basis = torch.linalg.qr(torch.rand(2, 64, rank, generator=g) + 1)[0].abs()
        args = args + (basis, torch.zeros(1, 2, 20))
    got = chunk_score_triton(*args)
    assert (got < 0).all()
    torch.testing.assert_close(got, chunk_score_ref(*args), rtol=1e-5, atol=1e-4)


def test_no_chunks_gives_an_empty_result():
    q = torch.randn(1, 4, 64)
    assert chunk_score_triton(q, torch.zeros(1, 2, 0, 64), torch.zeros(1, 2, 0, 64)).shape == (1, 2, 0)


def test_bad_inputs_raise():
    q, _, (lo, hi) = make_case(2, 2, 2, 3, 64, 10, 0, F32, F32)
    with pytest.raises(TypeError, match="kmax"):
        chunk_score_triton(q, lo, hi.to(torch.int32))
    with pytest.raises(ValueError, match="batch must be 1 or 2"):
        chunk_score_triton(q, lo.repeat(2, 1, 1, 1), hi.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="kmax must have shape"):
        chunk_score_triton(q, lo, hi[:, :, :5])
    with pytest.raises(ValueError, match="go together"):
        chunk_score_triton(q, lo, hi, basis=torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match="head dim"):
        chunk_score_triton(q, lo[..., :8], hi[..., :8])
    with pytest.raises(ValueError, match="last dimension"):
        chunk_score_triton(q, lo.transpose(2, 3).contiguous().transpose(2, 3), hi)
