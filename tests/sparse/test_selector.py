"""Sparse decode selection: config, layer budgets (uniform / SqueezeAttention), per-layer budgets
respected by the store, h2o eviction, and the dense fallback when the budget covers the context."""

import math

import pytest
import torch

from offload import ConfigError, OffloadConfig
from offload.tiers.store import TieredKVStore
from offload.tiers.squeeze import kmeans_1d, layer_budgets


@pytest.mark.parametrize("kwargs", [
    {"budget": 0}, {"budget": -3}, {"budget": 1.0}, {"budget": 0.0}, {"budget": 1.5}, {"budget": True},
    {"budget": "1/8"}, {"rank": 0}, {"policy": "magic"}, {"layer_budget": "random"},
])  # fmt: skip
def test_bad_sparse_fields(kwargs):
    with pytest.raises(ConfigError):
        OffloadConfig(**kwargs)


def test_budget_switches_to_tiered_store():
    assert OffloadConfig().store_kind == "dense" and not OffloadConfig().sparse
    c = OffloadConfig(budget=0.125, policy="quest", layer_budget="squeeze", rank=8)
    assert c.sparse and c.store_kind == "tiered" and c.kv_store == "dense"


def test_kmeans_1d_and_squeeze_budgets():
    vals = [0.1, 0.12, 0.5, 0.52, 0.9, 0.91, 0.95]
    assert kmeans_1d(vals) == [0, 0, 1, 1, 2, 2, 2]
    assert kmeans_1d([0.3] * 4) == [0] * 4
    assert layer_budgets(100, 7, "uniform", vals) == [100] * 7
    b = layer_budgets(100, 7, "squeeze", vals)
    assert sum(b) == 700 and b[4:] == [50, 50, 50] and min(b[:4]) > 100
    assert layer_budgets(100, 7, "squeeze", None) == [100] * 7  # no statistics: uniform


def _filled_store(cfg, n_layers=4, n_kv=2, d=16, n=600, seed=0):
    """Random keys and queries: every layer's attention is diffuse, so tests of selection itself
    turn whole layers off (whole_below=0; test_sparse_whole.py covers them)."""
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(n_layers, n_kv, d, torch.float32, "cpu", config=cfg)
    for layer in range(n_layers):
        k, v = torch.randn(1, n_kv, n, d, generator=g), torch.randn(1, n_kv, n, d, generator=g)
        st.append(layer, k, v)
        cos = [0.99, 0.5, 0.98, 0.6][layer]  # layers 0 and 2 change h least: squeezed
        q_tail = torch.randn(1, 2 * n_kv, 8, d, generator=g)
        if st.prefill_observer is not None:
            st.prefill_observer(layer, q_tail, k, d**-0.5, cos)
    return st, g


# (policy, select_unit): `token` picks single tokens by default, whole chunks when asked
UNITS = [("bound", None), ("token", None), ("token", "chunk"), ("quest", None), ("landmark", None),
         ("snapkv", None), ("h2o", None)]  # fmt: skip


@pytest.mark.parametrize("policy,unit", UNITS)
@pytest.mark.parametrize("layer_budget", ["uniform", "squeeze"])
def test_budgets_respected_per_layer(policy, unit, layer_budget):
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, budget=0.25, policy=policy,
                        layer_budget=layer_budget, rank=4, whole_below=0, select_unit=unit)  # fmt: skip
    st, g = _filled_store(cfg)
    sel, lay = st.selector, st.layout
    assert sel.tokens == (policy == "token" and unit is None)
    size = 1 if sel.tokens else lay.chunk  # tokens a selected id stands for
    n = st.layer_len(0)
    tokens = math.ceil(0.25 * n)
    per_layer = [sel.token_budget(layer, n) // size * size for layer in range(4)]
    assert all(b <= tokens * (2 if layer_budget == "squeeze" else 1) for b in per_layer)
    want = layer_budgets(tokens, 4, layer_budget, [0.99, 0.5, 0.98, 0.6])
    assert all(p <= w for p, w in zip(per_layer, want))
    if layer_budget == "squeeze":
        assert per_layer[0] < per_layer[1] and per_layer[2] < per_layer[3]
    for layer in range(4):
        m = st._mgr.n_chunks(layer)
        q = torch.randn(1, 4, 16, generator=g)
        ids = sel.select(layer, q, m, n)
        assert ids.shape == (2, per_layer[layer] // size)
        for row in ids:
            assert len(set(row.tolist())) == len(row) and ((row >= 0) & (row < m * lay.chunk // size)).all()
        out = st.attend(layer, q[:, :, None], 16**-0.5)
        assert out.shape == (1, 1, 4, 16) and torch.isfinite(out).all()
    st.close()


def test_h2o_evicts_for_good():
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, budget=64, policy="h2o", whole_below=0)
    st, g = _filled_store(cfg, n_layers=1)
    dropped = None
    for step in range(6):
        kv = torch.randn(2, 1, 2, 1, 16, generator=g)
        st.append(0, kv[0], kv[1])
        m = st._mgr.n_chunks(0)
        ids = st.selector.select(0, torch.randn(1, 4, 16, generator=g), m, st.layer_len(0))
        kept = [set(r.tolist()) for r in ids]
        if dropped is not None:
            assert all(not (kept[h] & dropped[h]) for h in range(2))
        dropped = [set(range(m)) - kept[h] for h in range(2)]
    st.close()


@pytest.mark.parametrize("policy", ["bound", "token"])
def test_budget_over_context_is_exact(policy):
    """A budget covering every chunk (every token) attends densely: bitwise the store without one."""
    dense_cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16)
    outs = []
    for cfg in (dense_cfg, dense_cfg.replace(budget=10**6, policy=policy)):
        st, g = _filled_store(cfg, n_layers=2)
        q = torch.randn(1, 4, 1, 16, generator=g)
        outs.append(st.attend(1, q, 0.25))
        st.close()
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("policy", ["bound", "token", "quest", "landmark"])
def test_truncate_then_refill_rebuilds_the_same_abstracts(policy):
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, budget=64, policy=policy, rank=4)
    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(1, 2, 300, 16, generator=g), torch.randn(1, 2, 300, 16, generator=g)
    a = TieredKVStore(1, 2, 16, torch.float32, "cpu", config=cfg)
    b = TieredKVStore(1, 2, 16, torch.float32, "cpu", config=cfg)
    a.append(0, k, v)
    a.truncate(150)
    for t in range(150, 300):  # decode-sized appends refill the body chunk by chunk
        a.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1])
    b.append(0, k, v)
    ab_a, ab_b = a.selector.abstracts, b.selector.abstracts
    assert ab_a.n == ab_b.n == [a._mgr.n_chunks(0)]
    m = ab_a.n[0]
    held = (lambda ab: ab.lo[0, ..., : m * ab.chunk]) if policy == "token" else (lambda ab: ab.lo[0, :, :, :m])
    assert torch.allclose(held(ab_a).float(), held(ab_b).float(), atol=1e-5)  # token: tokens last
    q = torch.randn(1, 4, 16, generator=g)
    assert torch.allclose(ab_a.scores(0, q), ab_b.scores(0, q), atol=1e-4)
    a.close(), b.close()


@pytest.mark.parametrize("policy,unit", [u for u in UNITS if u[0] != "h2o"])
def test_sparse_attend_is_exact_attention_over_its_selection(policy, unit):
    """What decode computes: per KV head, softmax attention over sinks + that head's selected chunks
    (or tokens) + window, and nothing else (the store's gathers and masks against a plain reference)."""
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, budget=0.25, policy=policy, rank=4, whole_below=0,
                        select_unit=unit)  # fmt: skip
    st, g = _filled_store(cfg)
    lay, n = st.layout, st.layer_len(0)
    padded = 0
    for layer in range(4):
        k, v = st.read_layer(layer)  # [1, Hkv, n, D]
        q = torch.randn(1, 4, 16, generator=g)
        m = st._mgr.n_chunks(layer)
        ids = st.selector.select(layer, q, m, n)  # what attend will pick (a pure function of q here)
        padded += int((ids < 0).any())  # adaptive budgets per row (token selections): -1 past a row's
        out = st.attend(layer, q[:, :, None], 16**-0.5)  # [1, 1, H, D]
        keep = torch.zeros(2, n, dtype=torch.bool)
        keep[:, : lay.sinks] = True
        keep[:, lay.chunk_start(m) :] = True  # the window: tokens after the last body chunk
        for h in range(2):
            for j in ids[h].tolist():
                if j < 0:
                    continue
                if st.selector.tokens:  # body token j sits at sinks + j
                    keep[h, lay.sinks + j] = True
                else:
                    keep[h, lay.chunk_start(j) : lay.chunk_start(j + 1)] = True
        for head in range(4):
            kv = head // 2
            s = (k[0, kv] @ q[0, head]) * 16**-0.5
            p = torch.softmax(s.masked_fill(~keep[kv], float("-inf")), dim=-1)
            torch.testing.assert_close(out[0, 0, head], p @ v[0, kv], atol=1e-5, rtol=1e-5)
    assert padded > 0 if st.selector.tokens else padded == 0  # the masked path ran
    st.close()


@pytest.mark.parametrize("slots", [None, 3], ids=["resident", "rounds"])
def test_a_token_selection_with_padding_is_exact_over_its_tokens(slots):
    """`attend(select=...)` of a store that picks tokens takes body token ids per head (-1 = none),
    in one round or (3 GPU slots: the chunks that hold them do not fit) in several, each head masked
    to its own tokens — against plain attention over sinks + those tokens + window."""
    per_chunk = 2 * 2 * 16 * 16 * 4
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, budget=0.25, rank=4, whole_below=0,
                        gpu_mem=None if slots is None else slots * 4 * per_chunk)  # fmt: skip
    st, g = _filled_store(cfg)
    assert st.selector.tokens
    lay, n = st.layout, st.layer_len(1)
    m = st._mgr.n_chunks(1)
    select = torch.tensor([[5, 17, 18, 3 * 16 + 15, m * 16 - 1, -1], [0, 40, -1, 41, 100, -1]])
    k, v = st.read_layer(1)
    q = torch.randn(1, 4, 1, 16, generator=g)
    out = st.attend(1, q, 0.25, select=select)
    for head in range(4):
        kv = head // 2
        keep = torch.zeros(n, dtype=torch.bool)
        keep[: lay.sinks] = keep[lay.chunk_start(m) :] = True
        keep[lay.sinks + select[kv][select[kv] >= 0]] = True
        p = torch.softmax((k[0, kv] @ q[0, head, 0] * 0.25).masked_fill(~keep, float("-inf")), -1)
        torch.testing.assert_close(out[0, 0, head], p @ v[0, kv], atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError, match="token"):
        st.attend(1, q, 0.25, select=torch.tensor([[m * 16]] * 2))
    st.close()
