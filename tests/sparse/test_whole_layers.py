"""Whole layers: a layer whose best chunk selection cannot keep `whole_below` of the prompt's attention
is attended whole (exact), at most L // 8 of them, only while it fits its GPU slots."""

import pytest
import torch

from offload import ConfigError, OffloadConfig
from offload.sparse import SparseConfig
from offload.sparse.policies.token import Token
from offload.sparse.whole_layers import oracle_recall, whole_layers
from offload.attention import decode_attend
from offload.tiers.store import TieredKVStore

L, HKV, D, C, N = 8, 2, 16, 8, 400


def test_oracle_recall_counts_edges_and_the_best_chunks():
    mass = torch.zeros(1, 1, 4 + 3 * 2 + 5)  # sinks 4, 3 chunks of 2, window 5
    mass[0, 0, :4] = 1.0  # sinks
    mass[0, 0, 4:6] = torch.tensor([2.0, 0.0])  # chunk 0: 2
    mass[0, 0, 6:8] = 3.0  # chunk 1: 6
    mass[0, 0, 8:10] = 0.5  # chunk 2: 1
    mass[0, 0, 10:] = 0.2  # window: 1
    total = 4 + 2 + 6 + 1 + 1
    assert oracle_recall(mass, 4, 2, 3, 1) == pytest.approx((4 + 1 + 6) / total)
    assert oracle_recall(mass, 4, 2, 3, 2) == pytest.approx((4 + 1 + 6 + 2) / total)
    assert oracle_recall(mass, 4, 2, 3, 0) == pytest.approx(5 / total)
    assert oracle_recall(mass, 4, 2, 3, 9) == pytest.approx(1.0)


def test_whole_layers_threshold_and_cap():
    r = [0.3, 0.9, 0.2, 0.45, 0.8, 0.95, None, 0.1, 0.99, 0.7, 0.6, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert whole_layers(r, 0.5) == {7, 2}  # 17 layers: at most 2, the lowest first
    assert whole_layers(r[:8], 0.5) == {7}
    assert whole_layers(r, 0.0) == set()
    assert whole_layers([None] * 8, 0.9) == set()


@pytest.mark.parametrize("w", [-0.1, 1.5, "0.5", True, None])
def test_bad_whole_below(w):
    with pytest.raises(ConfigError):
        SparseConfig(budget=0.1, whole_below=w)


def _store(whole_below, slots=None, seed=0, unit="token"):
    """Layer 2's keys are all equal (its attention is uniform: no chunk choice keeps much); every
    other layer's last queries point at one key each (a chunk choice keeps nearly all)."""
    per_chunk = 2 * HKV * C * D * 4
    sparse = SparseConfig(budget=0.1, policy=Token(rank=4, unit=unit), whole_below=whole_below)
    cfg = OffloadConfig(kv_chunk=C, sinks=4, window=8, sparse=sparse,
                        hot_set_bytes=None if slots is None else slots * L * per_chunk)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(L, HKV, D, torch.float32, "cpu", config=cfg)
    for layer in range(L):
        k, v = torch.randn(1, HKV, N, D, generator=g), torch.randn(1, HKV, N, D, generator=g)
        if layer == 2:
            k[:] = k[:, :, :1]
        q_tail = 30 * k[:, :, 100:101].repeat_interleave(2, dim=1).expand(-1, -1, 8, -1)  # [1, H, 8, D]
        st.append(layer, k, v)
        st.prefill_observer(layer, q_tail.contiguous(), k, D**-0.5, 0.9)
    return st


@pytest.mark.parametrize("unit", ["token", "chunk"], ids=["tokens", "chunks"])
def test_a_diffuse_layer_is_attended_whole_and_exactly(unit):
    st = _store(0.5, unit=unit)
    sel = st.selector
    ceilings = sel.plan.ceilings
    assert ceilings[2] < 0.5 < min(c for i, c in enumerate(ceilings) if i != 2)
    assert sel.budgets(N).whole == {2} and sel.is_whole(2, st.n_chunks(2), N)
    m = st.n_chunks(2)
    units = m * C if sel.tokens else m  # the body in the selector's unit
    q = torch.randn(1, 2 * HKV, 1, D)
    every = torch.arange(units).expand(HKV, units)
    assert torch.equal(sel.select(2, q[:, :, 0], m, N), every)  # whole: all of its body
    picked = sel.select(3, q[:, :, 0], m, N)
    want_k = sel.token_budget(3, N) if sel.tokens else sel.chunk_budget(3, N)
    assert picked.shape[1] == want_k < units  # sparse
    got = decode_attend(st, 2, q, D**-0.5, None)  # the sparse step of a whole layer
    want = st.attend(2, q, D**-0.5, select=every)  # every chunk (token), exact
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    off = _store(0.0, unit=unit)
    assert off.selector.select(2, q[:, :, 0], m, N).shape[1] < units and off.selector.plan.ceilings == (None,) * L
    st.close(), off.close()


def test_a_whole_layer_that_does_not_fit_its_slots_stays_sparse():
    st = _store(0.5, slots=10)  # 48 chunks per layer, 10 slots: reading it whole would stream
    m = st.n_chunks(2)
    assert whole_layers(list(st.selector.plan.ceilings), 0.5) == {2}  # chosen by its ceiling...
    assert 2 in st.selector.budgets(N).whole and st.slot_budget(2) == 10 < m
    assert not st.selector.is_whole(2, m, N)  # ...but not read whole
    assert st.selector.select(2, torch.randn(1, 2 * HKV, D), m, N) is not None
    st.close()
