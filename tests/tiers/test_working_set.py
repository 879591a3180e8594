"""The CPU working set (offload/tiers/working_set.py) that serves a decode step over a (kept)
selection: chunks gathered once while the selector keeps the selection, edges refreshed per step.
Its answer equals exact attention (the rounds path) over that selection while decoding appends
tokens, emits chunks and grows the window, and after a truncation reuses the same ids for new keys."""

import pytest
import torch

from offload import OffloadConfig
from offload.sparse import SparseConfig, make_policy
from offload.sparse.policies.token import Token
from offload.attention import decode_attend
from offload.tiers.store import TieredKVStore

L, HKV, D, C, N = 2, 2, 16, 8, 300


def _store(every, policy="token", seed=0, budget=64, batch=1):
    pol = Token(rank=4) if policy == "token" else make_policy(policy)
    sparse = SparseConfig(budget=budget, policy=pol, whole_below=0, select_every=every, rest=None)
    cfg = OffloadConfig(kv_chunk=C, sinks=4, window=8, sparse=sparse)
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(L, HKV, D, torch.float32, "cpu", config=cfg, batch=batch)
    for layer in range(L):
        k, v = torch.randn(batch, HKV, N, D, generator=g), torch.randn(batch, HKV, N, D, generator=g)
        st.append(layer, k, v)
        st.prefill_observer(layer, torch.randn(batch, 2 * HKV, 8, D, generator=g), k, D**-0.5, 0.9)
    return st


def _spy(store):
    """Record what the store's selector returns at each step, per layer (the selection attended)."""
    seen = {}
    select = store.selector.select

    def spy(layer, *args, **kw):
        seen[layer] = select(layer, *args, **kw)
        return seen[layer]

    store.selector.select = spy
    return seen


@pytest.mark.parametrize("policy,batch", [("token", 1), ("quest", 1), ("h2o", 1), ("token", 2)])
@pytest.mark.parametrize("every", [1, 5, 16])
def test_the_step_over_a_kept_selection_equals_exact_attention_while_decoding(policy, batch, every):
    """Each step appends a token to every layer (chunks leave the window on the way); the store's
    answer equals the rounds path over the selection the selector holds at that step."""
    st, ref = _store(every, policy, batch=batch), _store(every, policy, batch=batch)
    seen = _spy(st)
    g = torch.Generator().manual_seed(3)
    changes = 0
    last = [None] * L
    for _ in range(3 * C + 5):
        q = torch.randn(batch, 2 * HKV, 1, D, generator=g)
        for layer in range(L):
            k, v = (torch.randn(batch, HKV, 1, D, generator=g) for _ in range(2))
            st.append(layer, k, v)
            ref.append(layer, k, v)
            got = decode_attend(st, layer, q, 0.3, None)
            kept = seen[layer]  # what the step just attended over
            changes += kept is not last[layer]
            last[layer] = kept
            want = ref.attend(layer, q, 0.3, select=kept)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    steps = L * (3 * C + 5)
    assert changes == steps if every == 1 else L * 4 <= changes < steps
    if policy != "h2o":  # h2o asks for masses: the block-table path, no working set
        assert st.stats()["working_set_bytes"] > 0
    st.close(), ref.close()


@pytest.mark.parametrize("policy", ["snapkv", "token"])
def test_the_working_set_regathers_after_truncation(policy):
    """snapkv picks the same chunk ids step after step (the working set then skips the gather);
    after a truncate and a new turn's tokens in their place the same ids name other keys, and the
    step must read the new ones."""
    st, ref = _store(1, policy), _store(1, policy)
    seen = _spy(st)
    g = torch.Generator().manual_seed(5)

    def step():
        q = torch.randn(1, 2 * HKV, 1, D, generator=g)
        for layer in range(L):
            k, v = (torch.randn(1, HKV, 1, D, generator=g) for _ in range(2))
            st.append(layer, k, v)
            ref.append(layer, k, v)
            got = decode_attend(st, layer, q, 0.3, None)
            want = ref.attend(layer, q, 0.3, select=seen[layer])
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
