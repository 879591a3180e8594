"""`adaptive` layer budgets: recall curves from prefill attention, and the split that maximizes them."""

import itertools
import math

import pytest
import torch

from offload.config import OffloadConfig
from offload.tiers.adaptive_budgets import FLOOR_SHARE, adaptive_budgets, mass_curve
from offload.tiers.store import TieredKVStore
from offload.tiers.whole_layers import oracle_recall


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


def test_split_is_the_best_and_keeps_the_total():
    """Three layers, every split of 3 x base body tokens tried: the adaptive one keeps the most
    recall (floor 0), never less than uniform, and hands out exactly the total."""
    sinks, body, base = 4, 12, 4
    curves = [mass_curve(_mass(s, n=20, peak=p), sinks, body) for s, p in ((0, 0.2), (1, 1.0), (2, 2.0))]

    def total(split):
        return sum(float(c[1][int(k)]) for c, k in zip(curves, split))

    got = adaptive_budgets(base, curves, floor_share=0.0)
    assert sum(got) == 3 * base
    best = max(total(s) for s in itertools.product(range(body + 1), repeat=3) if sum(s) == 3 * base)
    assert total(got) == pytest.approx(best, abs=1e-6)
    assert total(got) > total([base] * 3)


def test_floor_whole_and_missing_layers():
    curves = [mass_curve(_mass(s, peak=p), 4, 40) for s, p in ((0, 3.0), (1, 0.1), (2, 0.1), (3, 3.0))]
    base = 16
    got = adaptive_budgets(base, curves)
    assert sum(got) == 4 * base and min(got) >= int(base * FLOOR_SHARE)
    assert got[1] > base and got[2] > base  # the diffuse layers get more
    got = adaptive_budgets(base, curves, whole=frozenset({1}))
    assert got[1] == base and sum(got) == 4 * base  # a whole layer keeps the uniform budget
    assert adaptive_budgets(base, [None, *curves[1:]])[0] == base
    assert adaptive_budgets(base, [None] * 4) == [base] * 4
    # a total the curves cannot take (context grown past the prompt): the rest evenly, total kept
    got = adaptive_budgets(50, curves)
    assert sum(got) == 200 and max(got) - min(got) <= 40


def test_store_splits_by_prefill_attention():
    """A store with adaptive layer budgets: before prefill statistics every layer has the uniform
    budget; after, the split follows the prompt's attention (a layer whose tail queries look at one
    key gives budget to one whose queries spread), the total is kept and every selection fits its
    layer's budget; a budget over the context is still dense."""
    n_kv, d, n, layers = 2, 16, 300, 3
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, budget=0.25, layer_budget="adaptive", rank=4,
                        whole_below=0)  # fmt: skip
    st = TieredKVStore(layers, n_kv, d, torch.float32, "cpu", config=cfg)
    g = torch.Generator().manual_seed(0)
    sel = st.selector
    tokens = math.ceil(0.25 * n)
    for layer in range(layers):
        k, v = torch.randn(1, n_kv, n, d, generator=g), torch.randn(1, n_kv, n, d, generator=g)
        st.append(layer, k, v)
        q_tail = torch.randn(1, 2 * n_kv, 8, d, generator=g) * 0.01  # layers 0, 2: near uniform
        if layer == 1:  # every tail query points at key 100 of each head
            q_tail = k[:, :, 100:101].repeat_interleave(2, 1).expand(-1, -1, 8, -1) * 4
        assert [sel.token_budget(i, n) for i in range(layers)] == [tokens] * layers  # not all in yet
        st.prefill_observer(layer, q_tail, k, d**-0.5, None)
    budgets = [sel.token_budget(i, n) for i in range(layers)]
    assert sum(budgets) == layers * tokens and budgets[1] == int(tokens * FLOOR_SHARE)
    for layer in range(layers):
        m = st._mgr.n_chunks(layer)
        ids = sel.select(layer, torch.randn(1, 2 * n_kv, d, generator=g), m, n)
        assert ids.shape == (n_kv, budgets[layer])
        out = st.attend(layer, torch.randn(1, 2 * n_kv, 1, d, generator=g), d**-0.5)
        assert torch.isfinite(out).all()
    st.close()
