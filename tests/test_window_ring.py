"""`WindowRing` and `HybridKVStore` against a store that keeps every token (`DenseKVStore`): the same
sliding-window attention, whatever the sizes of the appends, rewinds and compactions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.hybrid_store import HybridKVStore, layer_windows, ring_tokens
from offload.kernels.dispatch import causal_prefill_attention
from offload.kvstore import DenseKVStore
from offload.window_ring import WindowRing

B, H, D = 1, 2, 8


def _kv(t, gen):
    return torch.randn(B, H, t, D, generator=gen), torch.randn(B, H, t, D, generator=gen)


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 12), margin=st.integers(0, 12),
       steps=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 40)), min_size=1, max_size=12),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_ring_attends_like_the_whole_sequence(window, margin, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    ring, full = WindowRing(window, margin, (B, H, D), torch.float32, "cpu"), DenseKVStore(1, H, D, torch.float32, "cpu")
    for t, back in steps:
        k, v = _kv(t, gen)
        ring.append(k, v)
        full.append(0, k, v)
        assert ring.count == full.layer_len(0) and ring.held <= ring.keep
        q = torch.randn(B, 2 * H, 1, D, generator=gen)
        want = causal_prefill_attention(q, *full.read_layer(0), 0.3, window)
        torch.testing.assert_close(ring.attend(q, 0.3), want, rtol=1e-5, atol=1e-6)
        wk, _ = full.read_layer(0)
        k_ring, _ = ring.read()
        assert torch.equal(k_ring, wk[:, :, ring.count - ring.held :]) and ring.held >= min(ring.count, window - 1)
        n, full_ring = max(0, ring.count - back), ring.held == min(ring.count, ring.keep)
        if ring.can_rewind(n):
            ring.truncate(n)
            full.truncate(n)
            if n:
                q = torch.randn(B, 2 * H, 1, D, generator=gen)
                k1, v1 = _kv(1, gen)
                ring.append(k1, v1)
                full.append(0, k1, v1)
                torch.testing.assert_close(ring.attend(q, 0.3), causal_prefill_attention(q, *full.read_layer(0), 0.3, window),
                                           rtol=1e-5, atol=1e-6)  # fmt: skip
        else:
            assert back > margin or not full_ring  # a full ring can always rewind within its margin
            with pytest.raises(ValueError):
                ring.truncate(n)


def test_prefill_queries_read_only_their_window():
    gen = torch.Generator().manual_seed(0)
    ring = WindowRing(4, 4, (B, H, D), torch.float32, "cpu")
    k, v = _kv(20, gen)
    ring.append(k, v)
    q = torch.randn(B, 2 * H, 3, D, generator=gen)  # the last three positions at once
    torch.testing.assert_close(ring.attend(q, 0.5), causal_prefill_attention(q, k, v, 0.5, 4), rtol=1e-5, atol=1e-6)


def test_advance_counts_positions_before_a_saved_window():
    ring = WindowRing(4, 0, (B, H, D), torch.float32, "cpu")
    ring.advance(100)
    ring.append(*_kv(4, torch.Generator().manual_seed(1)))
    assert ring.count == 104 and ring.held == 4
    with pytest.raises(ValueError, match="before the first append"):
        ring.advance(1)
    with pytest.raises(ValueError):
        WindowRing(0, 1, (B, H, D), torch.float32, "cpu")


def test_hybrid_store_maps_layers_and_restarts_when_a_ring_cannot_rewind():
    gen = torch.Generator().manual_seed(2)
    windows = (4, 0, 4, 0)
    inner = DenseKVStore(2, H, D, torch.float32, "cpu")
    store = HybridKVStore(windows, inner, (B, H, D), torch.float32, "cpu")
    for layer in range(4):
        store.append(layer, *_kv(30, gen))
    assert [store.layer_len(i) for i in range(4)] == [30] * 4 and inner.layer_len(1) == 30
    assert store.read_layer(0)[0].shape[2] == 8 and store.read_layer(1)[0].shape[2] == 30  # window + margin
    assert store.stats()["window_bytes"] == 2 * 2 * ring_tokens(4) * B * H * D * 4
    store.truncate(27)  # within the margin (window 4 + margin 4)
    assert [store.layer_len(i) for i in range(4)] == [27] * 4
    store.truncate(10)  # the rings no longer hold positions 7..9
    assert [store.layer_len(i) for i in range(4)] == [0] * 4
    with pytest.raises(ValueError, match="global layer"):
        store.advance(1, 5)
    with pytest.raises(AttributeError):
        store.pool  # noqa: B018  (layer-indexed internals are not forwarded)


def test_layer_windows_from_configs():
    from types import SimpleNamespace as NS

    assert layer_windows(NS(sliding_window=512, layer_types=["sliding_attention", "full_attention"])) == (512, 0)
    assert layer_windows(NS(sliding_window=None, layer_types=["full_attention"])) == ()
    assert layer_windows(NS(sliding_window=4096)) == ()  # no layer types: every layer kept whole
    assert layer_windows(NS(sliding_window=512, layer_types=["full_attention"] * 2)) == ()
