"""`token` (offload/sparse/policies/token.py, the default): per-token int8 low-rank sketches. Their
per-token bound is >= q.k (invariant 5) on random and real keys; the mass they estimate is the
attention mass when the keys are low rank; the hybrid ranking takes ceil(share * k) units by the
bound, the rest by the mass; the sketches fit 1/8 of bf16 K+V."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_checks import (
    RANDOM_KEYS,
    check_bound_on_random_keys,
    check_bound_on_real_keys,
    geometry,
    same_summaries,
    scale,
    summarized,
)

from offload.config import OffloadConfig
from offload.errors import ConfigError
from offload.sparse import SparseConfig
from offload.sparse.policies.token import Token, best_first, hybrid_scores
from offload.tiers.store import TieredKVStore


def _low_rank_keys(n_kv, n, d, r, g):
    """Keys [Hkv, n, D] inside a random r-dimensional subspace per head."""
    basis = torch.linalg.qr(torch.randn(n_kv, d, r, generator=g))[0]  # [Hkv, D, r] orthonormal
    return torch.einsum("hnr,hdr->hnd", torch.randn(n_kv, n, r, generator=g) * 2, basis)


def test_chunks_added_together_equal_chunks_added_one_by_one():
    same_summaries(Token(rank=8), lambda s, m: [s.lo[0, ..., : m * 8], s.aux[0, ..., : m * 8]])


@settings(max_examples=40, deadline=None)
@given(rank=st.integers(1, 12), **RANDOM_KEYS)
def test_bound_on_random_keys(rank, **case):
    check_bound_on_random_keys(Token(rank=rank), **case)


def test_bound_on_real_keys(model):
    check_bound_on_real_keys(model, Token())


@pytest.mark.parametrize("group", [1, 3])
def test_mass_estimate_is_the_attention_mass_when_keys_are_low_rank(group):
    """Keys within the sketches' rank: the low-rank logits are the logits (up to int8), so the mass
    estimate equals the exact softmax mass per chunk over the body, summed over the query group."""
    g = torch.Generator().manual_seed(0)
    n_kv, d, c, m = 2, 64, 16, 12
    keys = _low_rank_keys(n_kv, m * c, d, 6, g)
    state = summarized(Token(rank=14), keys.reshape(n_kv, m, c, d), capacity=m)
    q = torch.randn(1, n_kv * group, d, generator=g)
    scaling = d**-0.5
    bound, mass = state.bound_and_mass(0, q, m, scaling)
    qg = q[0].reshape(n_kv, group, d)
    p = torch.softmax(torch.einsum("kgd,knd->kgn", qg, keys) * scaling, dim=-1)  # [Hkv, G, n]
    want = p.reshape(n_kv, group, m, c).sum(dim=(1, 3))  # [Hkv, m]
    torch.testing.assert_close(mass[0], want, atol=2e-3, rtol=2e-2)
    assert torch.allclose(mass[0].sum(-1), torch.full((n_kv,), float(group)), atol=1e-4)
    none = state.bound_and_mass(0, q, m, None)
    torch.testing.assert_close(bound, none[0])  # asking for the mass leaves the bound alone
    assert none[1] is None


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_hybrid_takes_the_bound_share_then_the_most_mass(share, k):
    g = torch.Generator().manual_seed(k)
    bound, mass = torch.randn(2, 3, 20, generator=g), torch.rand(2, 3, 20, generator=g)
    got = hybrid_scores(bound, mass, k, share).topk(k, dim=-1).indices
    first = math.ceil(share * k)
    for b in range(2):
        for h in range(3):
            chosen = set(got[b, h].tolist())
            by_bound = set(bound[b, h].topk(first).indices.tolist()) if first else set()
            assert by_bound <= chosen
            rest = mass[b, h].clone()
            rest[list(by_bound)] = -1.0
            assert chosen - by_bound == set(rest.topk(k - len(by_bound)).indices.tolist())


def test_best_first_is_the_top_k_sorted():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 50, generator=g)
    assert torch.equal(best_first(scores, 7), scores.topk(7, dim=-1).indices)


@pytest.mark.parametrize("share", [-0.1, 1.5, "0.5", True, None])
def test_bad_share(share):
    with pytest.raises(ConfigError, match="share"):
        Token(share=share)


@pytest.mark.parametrize("kw", [{"rank": 0}, {"rank": 2.5}, {"rank": True}, {"unit": "tokens"}, {"unit": ""},
                                {"unit": 1}])  # fmt: skip
def test_bad_rank_or_unit(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        Token(**kw)


def test_unit_decides_what_a_selection_names():
    assert Token().selects_tokens and not Token(unit="chunk").selects_tokens
    assert Token.chunk == 8


@pytest.mark.parametrize("unit", ["token", "chunk"])
def test_store_ranks_by_the_bound_share(unit):
    """The store's selection: share 1 = the k best bounds; share 0 = the k largest mass estimates;
    the default lies between and always holds the ceil(share k) best bounds — of single tokens
    (the default unit) or of whole chunks."""
    g = torch.Generator().manual_seed(3)
    n_kv, d, n = 2, 64, 700
    keys = _low_rank_keys(n_kv, n, d, 20, g)[None]  # above the rank: the bound has a residual
    keys[0, :, 300] *= 6  # one outlier key per head: the bound's pick
    vals = torch.randn(1, n_kv, n, d, generator=g)
    q = keys[:, :, 300].repeat_interleave(2, 1) * 0.05  # [1, H, D]: looks at the outlier a little
    picks = {}
    for share in (0.0, 0.25, 1.0):
        sparse = SparseConfig(budget=128, policy=Token(share=share, unit=unit), whole_below=0)
        st = TieredKVStore(1, n_kv, d, torch.float32, "cpu", config=OffloadConfig(kv_chunk=16, sinks=4, window=16,
                                                                                  sparse=sparse))  # fmt: skip
        st.append(0, keys, vals)
        m = st.n_chunks(0)
        ids = st.selector.select(0, q, m, n, d**-0.5)
        bound, mass = st.selector.state.bound_and_mass(0, q, m, d**-0.5, per_token=unit == "token")
        k = ids.shape[1]
        by_bound, by_mass = bound[0].topk(k).indices, mass[0].topk(k).indices
        for h in range(n_kv):
            chosen = set(ids[h].tolist())
            if share == 1.0:
                assert chosen == set(by_bound[h].tolist())
            elif share == 0.0:
                assert chosen == set(by_mass[h].tolist())
            else:
                assert set(by_bound[h, : math.ceil(share * k)].tolist()) <= chosen
        picks[share] = ids
        st.close()
    assert not torch.equal(picks[0.0].sort(-1).values, picks[1.0].sort(-1).values)  # the rankings differ here


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim, rank", [(64, None), (128, None), (64, 200)])
def test_sketches_are_at_most_an_eighth_of_the_kv(head_dim, rank, kv_dtype):
    """Issue budget: sketch bytes per token <= 1/8 of K+V (bf16, or the fp32 KV of CPU runs); the
    default rank, and the cap of a larger one, spend exactly the eighth of bf16 KV (fp32 KV: the
    scale and residual in fp32); the basis is counted apart. summary_bytes says the same."""
    policy, n_kv, chunks = Token(rank=rank), 2, 40
    c = policy.chunk
    state = policy.start(geometry(n_kv, head_dim, c, capacity=chunks, kv_dtype=kv_dtype))
    per_token = (state.nbytes - state.basis.nbytes) / (chunks * c * n_kv)
    kv = 2 * head_dim * kv_dtype.itemsize
    assert per_token <= kv / 8
    assert state.rank == head_dim // 2 - 4
    assert per_token == (kv / 8 if kv_dtype == torch.bfloat16 else state.rank + 8)
    assert per_token == policy.summary_bytes(head_dim, c, kv_dtype.itemsize)
