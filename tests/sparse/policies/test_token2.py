"""`token2` (two levels, offload/sparse/block_bounds.py + policies/token.py): a block's bound is >= every
sketch bound in it (hence >= q.k, invariant 5); the candidates are whole top blocks plus the tail,
rebuilt blocks never go stale; a selection whose candidates cover the body equals one-level `token`'s;
a lone needle key is found at a small budget; bad parameters are ConfigErrors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_checks import RANDOM_KEYS, best_dot, check_bound_on_real_keys, geometry, scale, summarized

from offload.errors import ConfigError
from offload.sparse import SparseConfig, make_policy
from offload.sparse.policies.token import _HALF_STEP, Token, TwoLevel
from offload.sparse.selector import Selector

TOL = 1e-4


def _block_and_token_bounds(state, q, n):
    """(block bounds [Hkv, full], per-token sketch bounds [Hkv, n]) of layer 0."""
    blk = state.blocks.block
    blocks = state.blocks.scores(0, q, state.basis.basis[0], n // blk, _HALF_STEP)[0]
    tokens = state.bound_and_mass(0, q, n // state.geometry.chunk, None, per_token=True)[0][0]
    return blocks, tokens


@settings(max_examples=40, deadline=None)
@given(block=st.sampled_from([2, 4, 12]), rank=st.integers(1, 12), **RANDOM_KEYS)
def test_block_bound_covers_every_token_bound_and_key(block, rank, seed, n_kv, group, d, chunk, m, spread,
                                                      offset, outlier):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_kv, m + 2, chunk, d, generator=g) * spread + offset
    if outlier:
        keys[:, 0, 0] = torch.randn(n_kv, d, generator=g) * spread * 50
    state = summarized(TwoLevel(rank=rank, block=block), keys)
    n = keys.shape[1] * chunk
    full = n // block
    q = torch.randn(1, n_kv * group, d, generator=g) * spread
    blocks, tokens = _block_and_token_bounds(state, q, n)
    if full == 0:
        return
    per_block = tokens[:, : full * block].reshape(n_kv, full, block).amax(-1)
    tol = TOL * scale(q, keys)
    assert (blocks >= per_block - tol).all(), (blocks - per_block).min()
    dots = best_dot(q, keys.reshape(n_kv, 1, n, d)[:, :, : full * block].reshape(n_kv, full, block, d), n_kv)
    assert (blocks.double() >= dots - tol).all()


def test_candidates_are_whole_top_blocks_then_the_tail():
    g = torch.Generator().manual_seed(1)
    n_kv, c, d, m = 2, 8, 32, 13  # 104 tokens: 6 blocks of 16 and a tail of 8
    keys = torch.randn(n_kv, m, c, d, generator=g)
    state = summarized(TwoLevel(rank=8, block=16, candidates=2), keys)
    q = torch.randn(1, 2 * n_kv, d, generator=g)
    ids = state.candidates(0, q, m, 16, d**-0.5)  # 2 * 16 tokens: 2 blocks
    assert ids.shape == (1, n_kv, 2 * 16 + 8)
    blocks = state.blocks.scores(0, q, state.basis.basis[0], 6, _HALF_STEP)[0]
    for h in range(n_kv):
        row = ids[0, h]
        assert row[-8:].tolist() == list(range(96, 104))  # the tail, always
        got = sorted({int(t) // 16 for t in row[:-8]})
        assert got == sorted(blocks[h].topk(2).indices.tolist())
        assert row[:-8].tolist() == [b * 16 + i for b in got for i in range(16)]
    assert state.candidates(0, q, m, 48, d**-0.5) is None  # 96 candidates: every complete block


def test_rewritten_blocks_equal_a_fresh_build():
    """Blocks over chunks that were truncated and written again hold the new keys' summary."""
    g = torch.Generator().manual_seed(2)
    n_kv, c, d = 1, 4, 16
    old, new = torch.randn(n_kv, 10, c, d, generator=g), torch.randn(n_kv, 10, c, d, generator=g)
    state = summarized(TwoLevel(rank=6, block=12), old, basis_keys=old.reshape(n_kv, -1, d))
    mixed = torch.cat([old[:, :4], new[:, 4:]], 1)
    state.truncate(0, 4)
    for j in range(4, 10):
        state.add(0, j, new[:, j])
    fresh = summarized(TwoLevel(rank=6, block=12), mixed, basis_keys=old.reshape(n_kv, -1, d))
    torch.testing.assert_close(state.blocks.summary[..., :3, :], fresh.blocks.summary[..., :3, :])


def _selector(policy, n_kv, d, c, capacity, budget):
    return Selector(SparseConfig(budget=budget, policy=policy, split="uniform", whole_below=0, rest=None),
                    geometry(n_kv, d, c, capacity))  # fmt: skip


def _fill(sel, keys):
    n_kv, n, d = keys.shape
    sel.before_chunks(0, keys)
    sel.add_chunks(0, 0, keys)


def test_candidates_covering_the_body_select_what_one_level_selects():
    g = torch.Generator().manual_seed(3)
    n_kv, c, d, n = 3, 8, 64, 512
    keys = torch.randn(n_kv, n, d, generator=g) * torch.linspace(0.3, 2, d)
    q = torch.randn(1, 3 * n_kv, d, generator=g)
    one, two = _selector("token", n_kv, d, c, 64, 64), _selector(TwoLevel(candidates=8), n_kv, d, c, 64, 64)
    for sel in (one, two):
        _fill(sel, keys)
    a, b = one.select(0, q, n // c, n), two.select(0, q, n // c, n)  # 8 x 64 = every token
    assert a.shape == b.shape == (n_kv, 64)
    assert [sorted(r) for r in a.tolist()] == [sorted(r) for r in b.tolist()]
    whole = _selector(TwoLevel(), n_kv, d, c, 64, n)
    _fill(whole, keys)
    assert whole.select(0, q, n // c, n) is None  # a budget covering the body: exact


def _needles(seed, n_kv, n, d, where, strength):
    """Noise keys [Hkv, n, D] with one key per head at `where` aligned with its group's first query
    (norm `strength`), and the queries [1, 2 Hkv, D]."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_kv, n, d, generator=g)
    q = torch.randn(1, 2 * n_kv, d, generator=g)
    for h, t in enumerate(where):
        keys[h, t] = q[0, 2 * h] / q[0, 2 * h].norm() * strength
    return keys, q, where


@pytest.mark.parametrize("block", [16, 64])
def test_a_lone_needle_is_found_at_a_small_budget(block):
    """One key aligned with the query among 8k noise keys: two levels at 1/64 select it."""
    n_kv, c, d, n = 2, 8, 64, 8192
    keys, q, where = _needles(4, n_kv, n, d, [1234, 6001], 12)
    sel = _selector(TwoLevel(block=block), n_kv, d, c, n // c, n // 64)
    _fill(sel, keys)
    ids = sel.select(0, q, n // c, n)
    assert ids.shape == (n_kv, n // 64)
    for h, t in enumerate(where):
        assert t in ids[h].tolist()
    assert sel.state.candidates(0, q, n // c, n // 64, d**-0.5).shape[-1] == 8 * n // 64


def test_bound_on_real_keys(model):
    check_bound_on_real_keys(model, TwoLevel())


@pytest.mark.parametrize("bad", [dict(candidates=0.5), dict(candidates=-1), dict(candidates=True),
                                 dict(block=1), dict(block=8.0), dict(candidates=4, unit="chunk"), dict(fan=4),
                                 dict(candidates=4, fan=1), dict(candidates=4, fan=-2), dict(candidates=4, fan=2.0)])  # fmt: skip
def test_bad_parameters(bad):
    with pytest.raises(ConfigError):
        Token(**bad)


def test_registered_and_planned():
    assert make_policy("token2").candidates == 8 and make_policy("token").candidates == 0
    one, two = Token(), TwoLevel()
    blocks = (2 * 28 + 2) * 4 / 16
    assert two.summary_bytes(64, 8, 2) == pytest.approx(one.summary_bytes(64, 8, 2) + blocks * (1 + 1 / 16))


def test_three_levels_find_a_lone_needle_scoring_few_blocks():
    """32k isotropic keys (the worst case for boxes), one needle per head, budget 1/256: superblocks
    keep 4x the needed blocks' worth (16 of 128 superblocks), the needle's block is among them and
    the needle is selected, as with two levels."""
    n_kv, c, d, n = 2, 8, 64, 32768
    keys, q, where = _needles(6, n_kv, n, d, [777, 30001], 16)
    for fan in (16, 0):
        sel = _selector(TwoLevel(fan=fan), n_kv, d, c, n // c, n // 256)
        _fill(sel, keys)
        if fan:  # the third level is used: 16 superblocks kept of 128
            assert -(-4 * (8 * 128 // 16) // fan) < n // (16 * fan)
        ids = sel.select(0, q, n // c, n)
        for h, t in enumerate(where):
            assert t in ids[h].tolist()
