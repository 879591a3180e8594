"""`adaptive` layer budgets: recall curves from prefill attention, and the split that maximizes them."""

import itertools
import math

import pytest
import torch

from offload.config import OffloadConfig
from offload.sparse import SparseConfig
from offload.sparse.adaptive_budgets import FLOOR_SHARE, WIDE_SHARE, adaptive_budgets, adaptive_split, mass_curve
from offload.sparse.policies.token import Token
from offload.sparse.whole_layers import oracle_recall
from offload.attention import decode_attend
from offload.tiers.store import TieredKVStore


def _mass(seed, rows=3, n=60, peak=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(peak * 4 * torch.randn(1, rows, n, generator=g), -1) * 5  # 5 queries' worth


@pytest.mark.parametrize("seed", range(3))
def test_curve_is_the_token_oracle(seed):
    """Each point of the curve is the best recall of k body tokens (whole_layers.oracle_recall at
    unit 1), and the curve rises and flattens (concave: the split's greedy is exact on it)."""
    mass, sinks, body = _mass(seed), 4, 40  # keys 44.. are the window
    ks, rec = mass_curve(mass, sinks, body)
    assert ks[0] == 0 and ks[-1] == body and len(ks) == body + 1  # 128 pieces: every k of 40
    for k, r in zip(ks.long().tolist(), rec.tolist()):
        assert r == pytest.approx(oracle_recall(mass, sinks, 1, body, k), abs=1e-6)
    steps = rec[1:] - rec[:-1]
    assert (steps >= -1e-7).all() and (steps[1:] <= steps[:-1] + 1e-7).all()
    rows = mass_curve(mass, sinks, body, per_row=True)  # one curve per row (KV head), same ks
    assert rows.shape == (1 + 3, len(ks)) and torch.equal(rows[0], ks)
    for r in range(3):
        want = [oracle_recall(mass[:, r : r + 1], sinks, 1, body, k) for k in ks.long().tolist()]
        assert rows[1 + r].tolist() == pytest.approx(want, abs=1e-6)
    assert rows[1:].mean(0).tolist() == pytest.approx(rec.tolist(), abs=1e-6)


def test_split_is_the_best_and_keeps_the_total():
    """Three layers, every split of 3 x base body tokens tried: the adaptive one keeps the most
    recall (floor 0), never less than uniform, and hands out exactly the total."""
    sinks, body, base = 4, 12, 4
    curves = [mass_curve(_mass(s, n=20, peak=p), sinks, body) for s, p in ((0, 0.2), (1, 1.0), (2, 2.0))]

    def total(split):
        return sum(float(c[1][int(k)]) for c, k in zip(curves, split))

    got = [b for (b,) in adaptive_budgets(base, curves, floor_share=0.0)]
    assert sum(got) == 3 * base
    best = max(total(s) for s in itertools.product(range(body + 1), repeat=3) if sum(s) == 3 * base)
    assert total(got) == pytest.approx(best, abs=1e-6)
    assert total(got) > total([base] * 3)
    # the same three curves as the rows of one layer: the same split
    rows = torch.cat([curves[0], curves[1][1:], curves[2][1:]])
    assert adaptive_budgets(base, [rows], floor_share=0.0) == [got]


def test_floor_whole_and_missing_layers():
    curves = [mass_curve(_mass(s, peak=p), 4, 40) for s, p in ((0, 3.0), (1, 0.1), (2, 0.1), (3, 3.0))]
    base = 16

    def split(*a, **kw):
        return [b for (b,) in adaptive_budgets(*a, **kw)]

    got = split(base, curves)
    assert sum(got) == 4 * base and min(got) >= int(base * FLOOR_SHARE)
    assert got[1] > base and got[2] > base  # the diffuse layers get more
    got = split(base, curves, whole=frozenset({1}))
    assert got[1] == base and sum(got) == 4 * base  # a whole layer keeps the uniform budget
    assert split(base, [None, *curves[1:]])[0] == base
    assert split(base, [None] * 4) == [base] * 4
    # a total the curves cannot take (context grown past the prompt): the rest evenly, total kept
    got = split(50, curves)
    assert sum(got) == 200 and max(got) - min(got) <= 40


def test_a_layer_too_wide_to_select_is_read_whole():
    """A layer the split would give at least WIDE_SHARE of its body joins the whole layers (the
    widest first, within whole_layers' cap of L // 8) and the split is made again without it: the
    rest share the same per-layer total; wide=False or no room under the cap leaves the split."""
    body, base = 40, 4  # uniform: a tenth of the body
    peaks = [3.0] * 8 + [0.02, 0.05] + [3.0] * 6  # 16 layers: cap 2; layers 8 and 9 nearly flat
    curves = [mass_curve(_mass(s, peak=p), 4, body) for s, p in enumerate(peaks)]
    plain = adaptive_budgets(base, curves)
    assert plain[8][0] >= WIDE_SHARE * body and plain[9][0] >= WIDE_SHARE * body
    split, whole = adaptive_split(base, curves)
    assert whole == {8, 9}
    assert split == adaptive_budgets(base, curves, whole) and split[8] == split[9] == [base]
    assert all(max(b) < WIDE_SHARE * body for i, b in enumerate(split) if i not in whole)
    assert sum(map(sum, split)) == 16 * base  # each remaining layer keeps its share of the total
    one_left = adaptive_split(base, curves, frozenset({3}))[1]  # room for one: 8 or 9 (a tie)
    assert len(one_left) == 2 and 3 in one_left and one_left & {8, 9}
    assert adaptive_split(base, curves, frozenset({3, 5})) == (adaptive_budgets(base, curves, {3, 5}), {3, 5})
    assert adaptive_split(base, curves, wide=False) == (plain, frozenset())
    narrow = adaptive_split(2, curves)  # a small total: nobody is wide
    assert narrow == (adaptive_budgets(2, curves), frozenset())


def test_store_reads_a_too_wide_layer_whole():
    """Near-uniform attention in every layer and a budget of a quarter of the context: each layer's
    split would read a quarter of its body, so (one layer allowed whole of 3) the widest is read
    whole — every body token selected — and the others keep selecting; whole_below=0 turns it off."""
    n_kv, d, n, layers = 2, 16, 300, 3
    for whole_below, n_whole in ((1e-6, 1), (0.0, 0)):
        sparse = SparseConfig(budget=0.3, policy=Token(rank=4), split="adaptive", whole_below=whole_below)
        cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, sparse=sparse)
        st = TieredKVStore(layers, n_kv, d, torch.float32, "cpu", config=cfg)
        g = torch.Generator().manual_seed(1)
        for layer in range(layers):
            k, v = torch.randn(1, n_kv, n, d, generator=g), torch.randn(1, n_kv, n, d, generator=g)
            st.append(layer, k, v)
            st.prefill_observer(layer, torch.randn(1, 2 * n_kv, 8, d, generator=g) * 0.01, k, d**-0.5, None)
        sel, m = st.selector, st.n_chunks(0)
        whole = [i for i in range(layers) if sel.is_whole(i, m, n)]
        assert sel.budgets(n).whole == set(whole)
        assert len(whole) == n_whole
        for layer in range(layers):
            ids = sel.select(layer, torch.randn(1, 2 * n_kv, d, generator=g), m, n)
            assert (ids.shape[1] == m * 16) == (layer in whole)  # whole: every body token
        st.close()


@pytest.mark.parametrize("unit", ["token", "chunk"])
def test_store_splits_by_prefill_attention(unit):
    """A store with adaptive budgets: before prefill statistics every layer has the uniform budget;
    after, the split follows the prompt's attention (the KV head whose tail queries look at one key
    gives budget to those whose queries spread) — per row (KV head) for token selections, per layer
    for chunk selections — the total is kept, and each row's selection fits its own budget."""
    n_kv, d, n, layers = 2, 16, 300, 3
    sparse = SparseConfig(budget=0.25, policy=Token(rank=4, unit=unit), split="adaptive", whole_below=0)
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, sparse=sparse)
    st = TieredKVStore(layers, n_kv, d, torch.float32, "cpu", config=cfg)
    g = torch.Generator().manual_seed(0)
    sel = st.selector
    tokens = math.ceil(0.25 * n)
    floor = int(tokens * FLOOR_SHARE)
    for layer in range(layers):
        k, v = torch.randn(1, n_kv, n, d, generator=g), torch.randn(1, n_kv, n, d, generator=g)
        st.append(layer, k, v)
        q_tail = torch.randn(1, 2 * n_kv, 8, d, generator=g) * 0.01  # near uniform attention
        if layer == 1:  # the tail queries of KV head 0 (query heads 0, 1) point at its key 100
            q_tail[:, :2] = k[:, :1, 100:101].expand(-1, 2, 8, -1) * 4
        assert [sel.token_budget(i, n) for i in range(layers)] == [tokens] * layers  # not all in yet
        st.prefill_observer(layer, q_tail, k, d**-0.5, None)
    split = [list(r) for r in sel.budgets(n).rows]
    assert sum(map(sum, split)) == layers * tokens * (n_kv if unit == "token" else 1)
    if unit == "token":
        assert split[1][0] == floor and split[1][1] > 2 * floor  # per KV head
        assert sel.row_budgets(1, n) == split[1]
    else:
        assert [len(s) for s in split] == [1] * layers and split[1][0] < tokens  # per layer
        assert sel.row_budgets(1, n) is None
    for layer in range(layers):
        m = st.n_chunks(layer)
        ids = sel.select(layer, torch.randn(1, 2 * n_kv, d, generator=g), m, n)
        size = 1 if unit == "token" else 16
        assert ids.shape == (n_kv, max(split[layer]) // size)
        rows = split[layer] * (n_kv if len(split[layer]) == 1 else 1)
        assert [int((r >= 0).sum()) for r in ids] == [b // size for b in rows]
        out = decode_attend(st, layer, torch.randn(1, 2 * n_kv, 1, d, generator=g), d**-0.5, None)
        assert torch.isfinite(out).all()
    st.close()
