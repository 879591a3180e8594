"""Kept selections (`OffloadConfig.select_every`) and the CPU working set that serves them.

The selector returns the same selection for `select_every` steps and chooses afresh at once when a
chunk joins the body, the budget moves or the layer is truncated; the store's step over a kept
selection (`WorkingSet`: chunks gathered once, edges refreshed per step) equals exact attention over
that selection while decoding appends tokens, emits chunks and grows the window."""

import pytest
import torch

from offload import OffloadConfig
from offload.tiers.store import TieredKVStore

L, HKV, D, C, N = 2, 2, 16, 8, 300


def _store(every, policy="token", seed=0, budget=64, batch=1):
    cfg = OffloadConfig(kv_chunk=C, sinks=4, window=8, budget=budget, rank=4, policy=policy, whole_below=0,
                        select_every=every)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(L, HKV, D, torch.float32, "cpu", config=cfg, batch=batch)
    for layer in range(L):
        k, v = torch.randn(batch, HKV, N, D, generator=g), torch.randn(batch, HKV, N, D, generator=g)
        st.append(layer, k, v)
        st.prefill_observer(layer, torch.randn(batch, 2 * HKV, 8, D, generator=g), k, D**-0.5, 0.9)
    return st


def _q(g):
    return torch.randn(1, 2 * HKV, D, generator=g)


def test_a_selection_is_kept_for_select_every_calls_then_made_afresh():
    st, g = _store(4), torch.Generator().manual_seed(1)
    sel, m = st.selector, st._mgr.n_chunks(0)
    picks = [sel.select(0, _q(g), m, N) for _ in range(9)]
    assert all(p is picks[0] for p in picks[1:4]) and all(p is picks[4] for p in picks[5:8])
    assert picks[4] is not picks[0] and picks[8] is not picks[4]
    assert sel.counters == {"selections": 3, "selections_kept": 6} and st.stats()["selections"] == 3
    assert not torch.equal(picks[0], picks[4])  # other queries, other chunks: it did choose again
    one = _store(1).selector
    a, b = one.select(0, _q(g), m, N), one.select(0, _q(g), m, N)
    assert a is not b
    st.close()


def test_a_chunk_joining_the_body_truncation_or_a_new_budget_ends_a_kept_selection():
    st, g = _store(16), torch.Generator().manual_seed(2)
    sel = st.selector
    m = st._mgr.n_chunks(0)
    first = sel.select(0, _q(g), m, N)
    assert sel.select(0, _q(g), m, N) is first
    assert sel.select(0, _q(g), m + 1, N + C) is not first  # a chunk left the window
    again = sel.select(0, _q(g), m, N)
    assert again is not first and sel.select(0, _q(g), m, N) is again
    st.truncate(N - 2 * C)
    assert sel.select(0, _q(g), st._mgr.n_chunks(0), N - 2 * C) is not again
    frac = _store(16, budget=0.2).selector
    a = frac.select(0, _q(g), m, N)
    assert frac.chunk_budget(0, N + 40) > frac.chunk_budget(0, N)
    assert frac.select(0, _q(g), m, N + 40) is not a  # the budget grew with the context
    st.close()


@pytest.mark.parametrize("policy,batch", [("token", 1), ("quest", 1), ("h2o", 1), ("token", 2)])
@pytest.mark.parametrize("every", [1, 5, 16])
def test_the_step_over_a_kept_selection_equals_exact_attention_while_decoding(policy, batch, every):
    """Each step appends a token to every layer (chunks leave the window on the way); the store's
    answer equals the rounds path over the selection the selector holds at that step."""
    st, ref = _store(every, policy, batch=batch), _store(every, policy, batch=batch)
    g = torch.Generator().manual_seed(3)
    changes = 0
    last = [None] * L
    for _ in range(3 * C + 5):
        q = torch.randn(batch, 2 * HKV, 1, D, generator=g)
        for layer in range(L):
            k, v = (torch.randn(batch, HKV, 1, D, generator=g) for _ in range(2))
            st.append(layer, k, v)
            ref.append(layer, k, v)
            got = st.attend(layer, q, 0.3)
            kept = st.selector._kept[layer][0]  # what the step just attended over
            changes += kept is not last[layer]
            last[layer] = kept
            want = ref.attend(layer, q, 0.3, select=kept)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    steps = L * (3 * C + 5)
    assert changes == steps if every == 1 else L * 4 <= changes < steps
    if policy != "h2o":  # h2o asks for masses: the block-table path, no working set
        assert st._ws.nbytes > 0
    st.close(), ref.close()


@pytest.mark.parametrize("policy", ["snapkv", "token"])
def test_the_working_set_regathers_after_truncation(policy):
    """snapkv picks the same chunk ids step after step (the working set then skips the gather);
    after a truncate and a new turn's tokens in their place the same ids name other keys, and the
    step must read the new ones."""
    st, ref = _store(1, policy), _store(1, policy)
    g = torch.Generator().manual_seed(5)

    def step():
        q = torch.randn(1, 2 * HKV, 1, D, generator=g)
        for layer in range(L):
            k, v = (torch.randn(1, HKV, 1, D, generator=g) for _ in range(2))
            st.append(layer, k, v)
            ref.append(layer, k, v)
            got = st.attend(layer, q, 0.3)
            want = ref.attend(layer, q, 0.3, select=st.selector._kept[layer][0])
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)

    for _ in range(3 * C + 2):
        step()
    n = st.layer_len(0)
    st.truncate(n - 3 * C), ref.truncate(n - 3 * C)
    for layer in range(L):  # a new turn: 3C other tokens at once (a prefill, no decode step between)
        k, v = (torch.randn(1, HKV, 3 * C, D, generator=g) for _ in range(2))
        st.append(layer, k, v)
        ref.append(layer, k, v)
    for _ in range(3):
        step()
    st.close(), ref.close()
