"""The `Selector` (offload/sparse/selector.py) over a tiered store: per-layer budgets (uniform /
SqueezeAttention) respected by every policy, the same summaries after truncate + refill, and kept
selections (SparseConfig.select_every): the same selection for that many steps, made afresh at once
when a chunk joins the body, the budget moves or the layer is truncated."""

import math

import pytest
import torch

from offload import OffloadConfig
from offload.sparse import SparseConfig, make_policy
from offload.sparse.policies.bound import Bound
from offload.sparse.policies.token import Token
from offload.sparse.squeeze import layer_budgets
from offload.attention import decode_attend
from offload.tiers.store import TieredKVStore


def policy(name, unit="token", rank=4):
    """The policy `name` as the old tests ran it: rank 4 for the low-rank ones."""
    if name == "token":
        return Token(rank=rank, unit=unit)
    return Bound(rank=rank) if name == "bound" else make_policy(name)


def _filled_store(sparse, n_layers=4, n_kv=2, d=16, n=600, seed=0, chunk=16, window=16, batch=1):
    """Random keys and queries: every layer's attention is diffuse, so tests of selection itself
    turn whole layers off (whole_below=0; test_whole_layers.py covers them)."""
    cfg = OffloadConfig(kv_chunk=chunk, sinks=4, window=window, sparse=sparse)
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(n_layers, n_kv, d, torch.float32, "cpu", config=cfg, batch=batch)
    for layer in range(n_layers):
        k, v = torch.randn(batch, n_kv, n, d, generator=g), torch.randn(batch, n_kv, n, d, generator=g)
        st.append(layer, k, v)
        cos = [0.99, 0.5, 0.98, 0.6][layer % 4]  # layers 0 and 2 change h least: squeezed
        st.prefill_observer(layer, torch.randn(batch, 2 * n_kv, 8, d, generator=g), k, d**-0.5, cos)
    return st, g


# (policy, unit): `token` picks single tokens by default, whole chunks when asked
UNITS = [("bound", "token"), ("token", "token"), ("token", "chunk"), ("quest", "token"), ("landmark", "token"),
         ("snapkv", "token"), ("h2o", "token")]  # fmt: skip


@pytest.mark.parametrize("name,unit", UNITS)
@pytest.mark.parametrize("split", ["uniform", "squeeze"])
def test_budgets_respected_per_layer(name, unit, split):
    st, g = _filled_store(SparseConfig(budget=0.25, policy=policy(name, unit), split=split, whole_below=0))
    sel, lay = st.selector, st.layout
    assert sel.tokens == (name == "token" and unit == "token")
    size = 1 if sel.tokens else lay.chunk  # tokens a selected id stands for
    n = st.layer_len(0)
    tokens = math.ceil(0.25 * n)
    per_layer = [sel.token_budget(layer, n) // size * size for layer in range(4)]
    assert all(b <= tokens * (2 if split == "squeeze" else 1) for b in per_layer)
    want = layer_budgets(tokens, 4, split, [0.99, 0.5, 0.98, 0.6])
    assert all(p <= w for p, w in zip(per_layer, want))
    if split == "squeeze":
        assert per_layer[0] < per_layer[1] and per_layer[2] < per_layer[3]
    for layer in range(4):
        m = st.n_chunks(layer)
        q = torch.randn(1, 4, 16, generator=g)
        ids = sel.select(layer, q, m, n)
        assert ids.shape == (2, per_layer[layer] // size)
        for row in ids:
            assert len(set(row.tolist())) == len(row) and ((row >= 0) & (row < m * lay.chunk // size)).all()
        out = decode_attend(st, layer, q[:, :, None], 16**-0.5, None)  # the sparse step
        assert out.shape == (1, 1, 4, 16) and torch.isfinite(out).all()
    st.close()


def _held(name, state, m, c):
    if name == "token":
        return [state.lo[0, ..., : m * c], state.aux[0, ..., : m * c]]  # tokens last
    return [t[0, :, :, :m] for t in state.buf.values()]


@pytest.mark.parametrize("name", ["bound", "token", "quest", "landmark"])
def test_truncate_then_refill_rebuilds_the_same_summaries(name):
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, sparse=SparseConfig(budget=64, policy=policy(name)))
    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(1, 2, 300, 16, generator=g), torch.randn(1, 2, 300, 16, generator=g)
    a = TieredKVStore(1, 2, 16, torch.float32, "cpu", config=cfg)
    b = TieredKVStore(1, 2, 16, torch.float32, "cpu", config=cfg)
    a.append(0, k, v)
    a.truncate(150)
    for t in range(150, 300):  # decode-sized appends refill the body chunk by chunk
        a.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1])
    b.append(0, k, v)
    m = a.n_chunks(0)
    assert m == b.n_chunks(0) == (300 - 4 - 16) // 16
    for x, y in zip(_held(name, a.selector.state, m, 16), _held(name, b.selector.state, m, 16)):
        assert torch.allclose(x.float(), y.float(), atol=1e-5)
    q = torch.randn(1, 4, 16, generator=g)
    sa = a.selector.state.scores(0, q, m, 4, 0.25, None)
    assert torch.allclose(sa, b.selector.state.scores(0, q, m, 4, 0.25, None), atol=1e-4)
    a.close(), b.close()


def _kept_store(every, budget=64):
    sparse = SparseConfig(budget=budget, policy=Token(rank=4), whole_below=0, select_every=every)
    return _filled_store(sparse, n_layers=2, n=300, chunk=8, window=8)[0]


def _q(g):
    return torch.randn(1, 4, 16, generator=g)


def test_a_selection_is_kept_for_select_every_calls_then_made_afresh():
    st, g = _kept_store(4), torch.Generator().manual_seed(1)
    sel, m, n = st.selector, st.n_chunks(0), st.layer_len(0)
    picks = [sel.select(0, _q(g), m, n) for _ in range(9)]
    assert all(p is picks[0] for p in picks[1:4]) and all(p is picks[4] for p in picks[5:8])
    assert picks[4] is not picks[0] and picks[8] is not picks[4]
    assert sel.counters == {"selections": 3, "selections_kept": 6, "selections_two_level": 0} and st.stats()["selections"] == 3
    assert not torch.equal(picks[0], picks[4])  # other queries, other chunks: it did choose again
    one = _kept_store(1).selector
    a, b = one.select(0, _q(g), m, n), one.select(0, _q(g), m, n)
    assert a is not b
    st.close()


def test_a_chunk_joining_the_body_truncation_or_a_new_budget_ends_a_kept_selection():
    st, g = _kept_store(16), torch.Generator().manual_seed(2)
    sel, m, n, c = st.selector, st.n_chunks(0), st.layer_len(0), 8
    first = sel.select(0, _q(g), m, n)
    assert sel.select(0, _q(g), m, n) is first
    assert sel.select(0, _q(g), m + 1, n + c) is not first  # a chunk left the window
    again = sel.select(0, _q(g), m, n)
    assert again is not first and sel.select(0, _q(g), m, n) is again
    st.truncate(n - 2 * c)
    assert sel.select(0, _q(g), st.n_chunks(0), n - 2 * c) is not again
    frac = _kept_store(16, budget=0.2).selector
    a = frac.select(0, _q(g), m, n)
    assert frac.chunk_budget(0, n + 40) > frac.chunk_budget(0, n)
    assert frac.select(0, _q(g), m, n + 40) is not a  # the budget grew with the context
    st.close()


def test_a_budget_covering_every_unit_selects_none():
    st, g = _filled_store(SparseConfig(budget=10**6, policy=policy("bound"), whole_below=0), n_layers=1)
    assert st.selector.select(0, _q(g), st.n_chunks(0), st.layer_len(0)) is None  # dense, exact
    st.close()


def test_state_dict_round_trips_into_a_fresh_selector():
    """What a session saves: the plan's statistics and the policy's state; a fresh store's selector
    given them has the original's plan (the same split and whole layers) and basis."""
    sparse = SparseConfig(budget=0.25, policy=Token(rank=4), whole_below=0.5)
    st, g = _filled_store(sparse)
    meta, tensors = st.selector.state_dict()
    other = TieredKVStore(4, 2, 16, torch.float32, "cpu", config=OffloadConfig(kv_chunk=16, sinks=4, window=16,
                                                                                 sparse=sparse))  # fmt: skip
    other.selector.load_state_dict(meta, tensors)
    assert other.selector.plan.ceilings == st.selector.plan.ceilings
    assert other.selector.plan.attn_cos == st.selector.plan.attn_cos
    n = st.layer_len(0)
    assert other.selector.budgets(n) == st.selector.budgets(n)
    assert torch.equal(other.selector.state.basis.basis, st.selector.state.basis.basis)
    assert other.selector.state.basis.has == [True] * 4
    st.close(), other.close()


def test_summaries_take_whole_chunks_of_the_stores_rows():
    """What joins a policy's summary is whole chunks of every row: a partial chunk, another row count
    or head dim is a ValueError naming the shape expected, and the summary is left as it was."""
    st, _ = _filled_store(SparseConfig(budget=64, policy=policy("bound"), whole_below=0), n_layers=1)
    sel, m = st.selector, st.n_chunks(0)
    before = {k: v.clone() for k, v in sel.state.state_dict().items()}
    for shape in ((2, 24, 16), (3, 32, 16), (2, 32, 8), (2, 32)):
        with pytest.raises(ValueError, match=r"summaries take keys \[2, n\*16, 16\]"):
            sel.add_chunks(0, m, torch.randn(*shape))
    after = sel.state.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    st.close()


@pytest.mark.parametrize("name,unit,split", [("token", "token", "adaptive"), ("token", "token", "uniform"),
                                             ("h2o", "token", "uniform"), ("quest", "token", "uniform")])  # fmt: skip
def test_predict_picks_what_select_would_and_records_nothing(name, unit, split):
    sparse = SparseConfig(budget=0.25, policy=policy(name, unit), split=split, whole_below=0, select_every=4)
    st, g = _filled_store(sparse)
    sel, n = st.selector, st.layer_len(0)
    for layer in range(4):
        m = st.n_chunks(layer)
        kept = sel.select(layer, _q(g), m, n)
        counters, state = dict(sel.counters), [t.clone() for t in st.selector.state.state_dict().values()]
        q = _q(g)
        guess = sel.predict(layer, q, m, n)
        assert sel.counters == counters and sel.select(layer, _q(g), m, n) is kept  # still kept
        assert all(torch.equal(a, b) for a, b in zip(state, st.selector.state.state_dict().values()))
        fresh = sel._choose(layer, q, m, *((m * st.layout.chunk, sel.token_budget(layer, n)) if sel.tokens else
                                         (m, sel.chunk_budget(layer, n))), 16**-0.5,
                            sel.row_budgets(layer, n) if sel.tokens else None, False)  # fmt: skip
        assert torch.equal(guess, fresh) and guess.shape == kept.shape
    st.close()
