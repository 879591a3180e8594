"""`token`'s hybrid ranking: a share of each layer's chunk budget by the per-token upper bound, the rest
by the attention mass the same per-token sketches estimate (tiers/abstracts.token_scores,
tiers/selection.hybrid_scores)."""

import math

import pytest
import torch

from offload.config import OffloadConfig
from offload.errors import ConfigError
from offload.tiers.abstracts import ChunkAbstracts
from offload.tiers.selection import hybrid_scores
from offload.tiers.store import TieredKVStore


def _low_rank_keys(n_kv, n, d, r, g):
    """Keys [Hkv, n, D] inside a random r-dimensional subspace per head."""
    basis = torch.linalg.qr(torch.randn(n_kv, d, r, generator=g))[0]  # [Hkv, D, r] orthonormal
    return torch.einsum("hnr,hdr->hnd", torch.randn(n_kv, n, r, generator=g) * 2, basis)


@pytest.mark.parametrize("group", [1, 3])
def test_mass_estimate_is_the_attention_mass_when_keys_are_low_rank(group):
    """Keys within the abstracts' rank: the low-rank logits are the logits (up to fp16), so the mass
    estimate equals the exact softmax mass per chunk over the body, summed over the query group."""
    g = torch.Generator().manual_seed(0)
    n_kv, d, c, m = 2, 64, 16, 12
    keys = _low_rank_keys(n_kv, m * c, d, 6, g)
    ab = ChunkAbstracts(1, 1, n_kv, d, "token", 14, "cpu", capacity=m, chunk=c)
    ab.ensure_basis(0, keys)
    for j in range(m):
        ab.add(0, j, keys[:, j * c : (j + 1) * c])
    q = torch.randn(1, n_kv * group, d, generator=g)
    scaling = d**-0.5
    bound, mass = ab.token_scores(0, q, scaling)
    qg = q[0].reshape(n_kv, group, d)
    p = torch.softmax(torch.einsum("kgd,knd->kgn", qg, keys) * scaling, dim=-1)  # [Hkv, G, n]
    want = p.reshape(n_kv, group, m, c).sum(dim=(1, 3))  # [Hkv, m]
    torch.testing.assert_close(mass[0], want, atol=2e-3, rtol=2e-2)
    assert torch.allclose(mass[0].sum(-1), torch.full((n_kv,), float(group)), atol=1e-4)
    torch.testing.assert_close(bound, ab.scores(0, q))  # asking for the mass leaves the bound alone
    assert ab.token_scores(0, q, None)[1] is None


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


@pytest.mark.parametrize("share", [-0.1, 1.5, "0.5", True, None])
def test_bad_bound_share(share):
    with pytest.raises(ConfigError, match="bound_share"):
        OffloadConfig(budget=0.1, bound_share=share)


@pytest.mark.parametrize("unit", [None, "chunk"], ids=["tokens", "chunks"])
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
        cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, budget=128, policy="token", whole_below=0,
                            bound_share=share, select_unit=unit)  # fmt: skip
        st = TieredKVStore(1, n_kv, d, torch.float32, "cpu", config=cfg)
        st.append(0, keys, vals)
        m, ab = st._mgr.n_chunks(0), st.selector.abstracts
        ids = st.selector.select(0, q, m, n, d**-0.5)
        bound, mass = ab.token_scores(0, q, d**-0.5, per_token=unit is None)
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
    assert not torch.equal(picks[0.0].sort(-1).values, picks[1.0].sort(-1).values)  # the two rankings differ here
