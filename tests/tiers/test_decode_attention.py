"""The sparse decode step over the block table (`store_attention.attend_selected`) against the exact
rounds path given the same selection: with every chunk resident, with misses fetched from host and
disk, and when the selection's union outgrows the layer's slots (fallback to rounds); the block table
follows the manager through evictions; hits are counted; h2o's masses agree between the paths."""

import pytest
import torch

from offload import OffloadConfig
from offload.tiers.store import TieredKVStore

L, HKV, D, C, N = 3, 2, 16, 8, 300


def _cfg(slots=None, host_chunks=None, **kw):
    per_chunk = 2 * HKV * C * D * 4
    gpu = None if slots is None else slots * L * per_chunk
    host = None if host_chunks is None else max(1, host_chunks * per_chunk)
    # random keys: every layer is diffuse; whole layers off, so that every layer takes the step
    return OffloadConfig(kv_chunk=C, sinks=4, window=8, budget=64, rank=4, gpu_mem=gpu, host_mem=host,
                         whole_below=0, **kw)  # fmt: skip


def _store(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(L, HKV, D, torch.float32, "cpu", config=cfg)
    for layer in range(L):
        k, v = torch.randn(1, HKV, N, D, generator=g), torch.randn(1, HKV, N, D, generator=g)
        st.append(layer, k, v)
        if st.prefill_observer is not None:
            st.prefill_observer(layer, torch.randn(1, 2 * HKV, 8, D, generator=g), k, D**-0.5, 0.9)
    return st


@pytest.mark.parametrize("policy", ["bound", "token", "quest", "snapkv"])
@pytest.mark.parametrize("slots,host", [(None, None), (20, 10), (5, None)],
                         ids=["resident", "misses-host-disk", "union-exceeds-slots"])  # fmt: skip
def test_step_equals_rounds_over_the_same_selection(policy, slots, host):
    st = _store(_cfg(slots, host, policy=policy))
    g = torch.Generator().manual_seed(1)
    k_sel = st.selector.chunk_budget(0, N)
    m = st._mgr.n_chunks(0)
    assert 0 < k_sel < m
    for step in range(4):
        for layer in range(L):
            q = torch.randn(1, 2 * HKV, 1, D, generator=g)
            chosen = st.selector.select(layer, q[:, :, 0], m, N, 0.3)  # [R, k]: what attend picks for q
            got = st.attend(layer, q, 0.3)  # the step
            want = st.attend(layer, q, 0.3, select=chosen)  # rounds, the exact reference
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
            table = st._table.slots(layer, st._mgr, torch.arange(m).view(1, -1))[0]
            for c in range(m):  # the device mirror agrees with the manager, evictions included
                slot = st._mgr.gpu_slot(layer, c)
                assert int(table[c]) == (-1 if slot is None else st._gpu.base[layer] + slot)
    stats = st.stats()
    if slots is None:
        assert stats["misses"] == 0 and stats["hits"] > 0  # counted on the device, no acquire
    else:
        assert stats["misses"] > 0
    if host is not None:
        assert stats["misses_disk"] > 0
    st.close()


@pytest.mark.parametrize("slots", [18, 6], ids=["fetch", "union-exceeds-slots"])
def test_step_through_decode_appends_matches_rounds(slots):
    """Chunks that join the body while decoding (hot adds that evict) keep the mirror in step."""
    st = _store(_cfg(slots, None, policy="bound"))
    ref = _store(_cfg(slots, None, policy="bound"))
    g = torch.Generator().manual_seed(2)
    for _ in range(2 * C + 3):
        q = torch.randn(1, 2 * HKV, 1, D, generator=g)
        for layer in range(L):
            k, v = torch.randn(1, HKV, 1, D, generator=g), torch.randn(1, HKV, 1, D, generator=g)
            st.append(layer, k, v)
            ref.append(layer, k, v)
            m, n = ref._mgr.n_chunks(layer), ref.layer_len(layer)
            chosen = ref.selector.select(layer, q[:, :, 0], m, n, 0.3)
            torch.testing.assert_close(st.attend(layer, q, 0.3), ref.attend(layer, q, 0.3, select=chosen),
                                       atol=2e-6, rtol=1e-5)  # fmt: skip
    assert st._mgr.n_chunks(0) > (N - 12) // C  # chunks were added during decode
    st.close(), ref.close()


@pytest.mark.parametrize("slots", [None, 20, 5])
def test_h2o_masses_equal_between_step_and_rounds(slots):
    """h2o accumulates each step's attention mass per selected chunk: the step (block table) and the
    rounds fallback (union > slots) must add the same masses, so the evictions stay the same."""
    a, b = _store(_cfg(None, policy="h2o")), _store(_cfg(slots, policy="h2o"))
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        for layer in range(L):
            q = torch.randn(1, 2 * HKV, 1, D, generator=g)
            torch.testing.assert_close(a.attend(layer, q, 0.3), b.attend(layer, q, 0.3), atol=2e-6, rtol=1e-5)
    for layer in range(L):
        m = a._mgr.n_chunks(layer)
        sa, sb = a.selector._score[layer][..., :m], b.selector._score[layer][..., :m]
        torch.testing.assert_close(sa, sb, atol=1e-5, rtol=1e-5)
        assert torch.equal(a.selector._alive[layer][..., :m], b.selector._alive[layer][..., :m])
        assert int(a.selector._alive[layer][..., :m].sum()) == HKV * a.selector.chunk_budget(layer, N)
    a.close(), b.close()
