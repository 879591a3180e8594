"""The torch references are the spec: prove each against a brute-force loop in float64, and the
chunk-score bounds against every key they bound (invariant 5). Also: CPU dispatch runs them."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import offload.kernels.dispatch as K
from offload.kernels import reference as ref


def _softmax_attend(q, keys, values, scale):
    """q [D], keys/values [N, D] (N may be 0) -> (out [D], lse) in float64."""
    if keys.shape[0] == 0:
        return torch.zeros_like(q), float("-inf")
    s = keys @ q * scale
    lse = torch.logsumexp(s, 0)
    return torch.softmax(s, 0) @ values, lse.item()


def _decode_inputs(seed, b=2, n_kv=2, group=3, d=16, chunk=4, width=5, n_extra=6):
    g = torch.Generator().manual_seed(seed)
    n_slots = width + 2
    q = torch.randn(b, n_kv * group, d, generator=g)
    k_pool = torch.randn(n_slots, n_kv, chunk, d, generator=g)
    v_pool = torch.randn(n_slots, n_kv, chunk, d, generator=g)
    table = torch.randint(0, n_slots, (b, n_kv, width), generator=g, dtype=torch.int32)
    body = torch.randint(0, width * chunk + 1, (b, n_kv), generator=g, dtype=torch.int32)
    body[0, 0] = 0  # an empty body
    xk = torch.randn(b, n_kv, n_extra, d, generator=g)
    xv = torch.randn(b, n_kv, n_extra, d, generator=g)
    xlen = torch.randint(0, n_extra + 1, (b,), generator=g, dtype=torch.int32)
    xlen[-1] = 0
    return q, k_pool, v_pool, table, body, xk, xv, xlen


def _relayout(k_pool, v_pool, layout):
    """The same pools in another memory layout: 'kv' = views of one [S, 2, Hkv, C, D] tensor (the
    tiers' GpuPool, k and v rows interleaved), 'strided' = a layout the flat gather cannot view."""
    if layout == "kv":
        kv = torch.stack([k_pool, v_pool], dim=1)
        return kv[:, 0], kv[:, 1]
    if layout == "strided":
        return (k_pool.transpose(0, 1).contiguous().transpose(0, 1),
                v_pool.transpose(0, 1).contiguous().transpose(0, 1))  # fmt: skip
    return k_pool, v_pool


@pytest.mark.parametrize("seed,layout", [(0, "contiguous"), (1, "contiguous"), (2, "contiguous"),
                                         (0, "kv"), (1, "strided"), (3, "full")])  # fmt: skip
def test_sparse_decode_reference_is_attention_over_the_selection(seed, layout):
    q, k_pool, v_pool, table, body, xk, xv, xlen = _decode_inputs(seed)
    k_pool, v_pool = _relayout(k_pool, v_pool, layout)
    if layout == "full":  # every body full and every extra valid: the unmasked path
        body.fill_(table.shape[2] * k_pool.shape[2])
        xlen.fill_(xk.shape[2])
    else:
        table[..., -1] = -7  # past the used chunks of short rows: must be ignored
        body.clamp_(max=(table.shape[2] - 1) * k_pool.shape[2])
    out, lse = ref.sparse_decode_attention_ref(q, k_pool, v_pool, table, body, xk, xv, xlen, scale=0.3)
    b, h, d = q.shape
    n_kv, chunk = k_pool.shape[1], k_pool.shape[2]
    for i in range(b):
        for head in range(h):
            kvh = head // (h // n_kv)
            ks, vs = [], []
            for j in range(int(body[i, kvh])):  # token by token, as the docstring says
                ks.append(k_pool[table[i, kvh, j // chunk], kvh, j % chunk])
                vs.append(v_pool[table[i, kvh, j // chunk], kvh, j % chunk])
            for j in range(int(xlen[i])):
                ks.append(xk[i, kvh, j])
                vs.append(xv[i, kvh, j])
            keys = torch.stack(ks).double() if ks else torch.zeros(0, d, dtype=torch.float64)
            vals = torch.stack(vs).double() if vs else torch.zeros(0, d, dtype=torch.float64)
            want, want_lse = _softmax_attend(q[i, head].double(), keys, vals, 0.3)
            torch.testing.assert_close(out[i, head].double(), want, rtol=1e-5, atol=1e-6)
            assert (lse[i, head].item() == want_lse) if math.isinf(want_lse) else \
                abs(lse[i, head].item() - want_lse) < 1e-5


def test_merge_attention_of_two_halves_is_attention_over_all():
    q, k_pool, v_pool, table, body, xk, xv, xlen = _decode_inputs(5)
    xlen[0] = 0  # with body[0, 0] = 0: KV head 0 of row 0 attends to nothing on either side
    full = ref.sparse_decode_attention_ref(q, k_pool, v_pool, table, body, xk, xv, xlen)
    body_only = ref.sparse_decode_attention_ref(q, k_pool, v_pool, table, body)
    zero_body = torch.zeros_like(body)
    extra_only = ref.sparse_decode_attention_ref(q, k_pool, v_pool, table, zero_body, xk, xv, xlen)
    out, lse = K.merge_attention(*body_only, *extra_only)
    torch.testing.assert_close(out, full[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, full[1], rtol=1e-5, atol=1e-6)  # -inf where both sides are empty
    assert torch.isinf(lse).any() and not torch.isnan(out).any()


def _chunks_with_abstracts(g, bk, n_kv, n, chunk, d, rank):
    """Real keys [Bk, Hkv, n, C, D] and their abstracts, Quest and low rank (basis from QR)."""
    keys = torch.randn(bk, n_kv, n, chunk, d, generator=g, dtype=torch.float64) + \
        torch.randn(1, n_kv, 1, 1, d, generator=g, dtype=torch.float64)  # a shared mean direction
    basis = torch.linalg.qr(torch.randn(n_kv, d, rank, generator=g, dtype=torch.float64))[0]
    proj = torch.einsum("bkncd,kdr->bkncr", keys, basis)
    res = keys - torch.einsum("bkncr,kdr->bkncd", proj, basis)
    quest = (keys.amin(3), keys.amax(3))
    low = (proj.amin(3), proj.amax(3), basis, res.norm(dim=-1).amax(3))
    return keys, quest, low


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 2), shared=st.booleans(),
       group=st.sampled_from([1, 3, 4]), rank=st.integers(1, 8))
def test_chunk_score_reference_bounds_every_key(seed, b, shared, group, rank):
    g = torch.Generator().manual_seed(seed)
    n_kv, n, chunk, d = 2, 5, 6, 8
    bk = 1 if shared else b
    keys, (kmin, kmax), (pmin, pmax, basis, rmax) = _chunks_with_abstracts(g, bk, n_kv, n, chunk, d, rank)
    q = torch.randn(b, n_kv * group, d, generator=g, dtype=torch.float64) * 3
    # best q.k per chunk and KV head, over the group's heads and the chunk's tokens: [B, Hkv, n]
    qk = torch.einsum("bkgd,bkncd->bkgnc", q.reshape(b, n_kv, group, d), keys.expand(b, -1, -1, -1, -1))
    best = qk.amax(dim=(2, 4))
    quest = ref.chunk_score_ref(q, kmin, kmax)
    low = ref.chunk_score_ref(q, pmin, pmax, basis, rmax)
    assert quest.dtype == torch.float32 and quest.shape == (b, n_kv, n)
    tol = 1e-5 * (1 + best.abs())  # fp32 rounding of the bound
    assert (quest.double() >= best - tol).all()
    assert (low.double() >= best - tol).all()


def test_chunk_score_reference_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 8, generator=g)
    kmin = torch.randn(1, 2, 4, 8, generator=g)
    kmax = kmin + torch.rand(1, 2, 4, 8, generator=g)
    got = ref.chunk_score_ref(q, kmin, kmax)
    for i in range(2):
        for kvh in range(2):
            for c in range(4):
                per_head = [sum(max(q[i, h, j] * kmin[0, kvh, c, j], q[i, h, j] * kmax[0, kvh, c, j])
                                for j in range(8)) for h in range(kvh * 3, kvh * 3 + 3)]
                assert abs(got[i, kvh, c].item() - max(per_head).item()) < 1e-5


@pytest.mark.parametrize("window", [None, 3])
def test_prefill_reference_matches_a_loop(window):
    g = torch.Generator().manual_seed(1)
    b, n_kv, group, lq, lk, d = 2, 2, 2, 5, 9, 8
    q = torch.randn(b, n_kv * group, lq, d, generator=g)
    k = torch.randn(b, n_kv, lk, d, generator=g)
    v = torch.randn(b, n_kv, lk, d, generator=g)
    out = ref.prefill_attention_ref(q, k, v, scale=0.5, sliding_window=window)
    assert out.shape == (b, lq, n_kv * group, d) and out.is_contiguous()
    for i in range(b):
        for head in range(n_kv * group):
            for t in range(lq):
                pos = lk - lq + t
                lo = 0 if window is None else max(0, pos - window + 1)
                keys, vals = k[i, head // group, lo:pos + 1].double(), v[i, head // group, lo:pos + 1].double()
                want, _ = _softmax_attend(q[i, head, t].double(), keys, vals, 0.5)
                torch.testing.assert_close(out[i, t, head].double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lq,lk,group", [(5, 9, 2), (7, 7, 1), (1, 6, 4), (16, 300, 3)])
def test_lower_right_prefill_equals_the_masked_reference(lq, lk, group):
    """CUDA's prefill path (a lower-right causal bias, no mask tensor there) computes what the explicit
    mask does: here torch builds the mask from the bias, on the GPU flash attention never does."""
    g = torch.Generator().manual_seed(lq + lk)
    q = torch.randn(2, 2 * group, lq, 16, generator=g)
    k, v = torch.randn(2, 2, lk, 16, generator=g), torch.randn(2, 2, lk, 16, generator=g)
    got = K.lower_right_prefill_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(got, ref.prefill_attention_ref(q, k, v, scale=0.3), rtol=1e-5, atol=1e-6)
    assert got.shape == (2, lq, 2 * group, 16) and got.is_contiguous()


def test_top_chunks():
    scores = torch.tensor([[[0.1, 0.9, 0.5, 0.7]]])
    idx = K.top_chunks(scores, 2)
    assert idx.dtype == torch.int32 and sorted(idx.flatten().tolist()) == [1, 3]


def test_cpu_dispatch_runs_the_references():
    args = _decode_inputs(7)
    for got, want in zip(K.sparse_decode_attention(*args), ref.sparse_decode_attention_ref(*args)):
        assert torch.equal(got, want)
    q = args[0]
    kmin = torch.randn(1, 2, 5, q.shape[-1])
    assert torch.equal(K.chunk_scores(q, kmin, kmin + 1), ref.chunk_score_ref(q, kmin, kmin + 1))
    qp, kp = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 7, 8)
    assert torch.equal(K.causal_prefill_attention(qp, kp, kp), ref.prefill_attention_ref(qp, kp, kp))


def test_public_ops_are_not_shadowed_by_submodules():
    """Importing a submodule sets a package attribute of its name: no op may share one."""
    import importlib
    import types

    for sub in ("sparse_decode", "token_decode", "chunk_score", "sketch_score", "reference", "dispatch"):
        importlib.import_module(f"offload.kernels.{sub}")
    for name in K.__all__:
        assert callable(getattr(K, name)) and not isinstance(getattr(K, name), types.ModuleType), name
