"""TieredKVStore against DenseKVStore: same attention, same layer contents, through prefill blocks,
decode tokens that complete window chunks, chat turns and truncation; spilling changes nothing."""

import os

import pytest
import torch

from offload.config import OffloadConfig
from offload.kernels.dispatch import causal_prefill_attention
from offload.kvstore import DenseKVStore, KVStore
from offload.tiers.store import TieredKVStore

L, HKV, D = 2, 2, 16


def _cfg(chunk=8, sinks=3, window=8, budget=3, host_chunks=None, **kw):
    per_chunk = 2 * HKV * chunk * D * 4  # fp32, batch 1
    host = None if host_chunks is None else max(1, host_chunks * per_chunk)  # 1 byte: no chunk
    return OffloadConfig(kv_chunk=chunk, sinks=sinks, window=window, hot_set_bytes=budget * L * per_chunk,
                         host_mem=host, **kw)  # fmt: skip


def _kv(t, seed, b=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, HKV, t, D, generator=g).to(dtype), torch.randn(b, HKV, t, D, generator=g).to(dtype))


def _check(tiered, dense, layer, lq, seed, groups=2, b=1, sw=None, atol=2e-6):
    q = torch.randn(b, HKV * groups, lq, D, generator=torch.Generator().manual_seed(seed)).to(dense.read_layer(0)[0].dtype)
    got = tiered.attend(layer, q, 0.25, sliding_window=sw)
    want = dense.attend(layer, q, 0.25, sliding_window=sw)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    for x, y in zip(tiered.read_layer(layer), dense.read_layer(layer)):
        assert torch.equal(x, y)
    assert tiered.layer_len(layer) == dense.layer_len(layer)


# steps: ("a", t) appends t tokens to every layer and attends with Lq = min(t, 5); ("t", n) truncates
SCRIPT = [("a", 45), ("a", 1), ("a", 1), ("a", 7), ("a", 1), ("a", 30), ("t", 50), ("a", 1),
          ("t", 20), ("a", 3), ("t", 2), ("a", 40), ("t", 0), ("a", 9)]  # fmt: skip


@pytest.mark.parametrize("cfg", [
    _cfg(),  # budget 3 slots < chunks: attention in rounds, evictions
    _cfg(budget=64),  # everything resident
    _cfg(host_chunks=4, compress=True),  # most chunks on disk, compressed records
    _cfg(chunk=4, sinks=0, window=0, budget=1, host_chunks=0),  # no sinks/window, all on disk, 1 slot
    _cfg(chunk=16, sinks=1, window=1, budget=2),
], ids=["rounds", "resident", "disk", "edge-less", "wide"])  # fmt: skip
@pytest.mark.parametrize("batch", [1, 2])
def test_matches_dense_through_a_script(cfg, batch):
    tiered = TieredKVStore(L, HKV, D, torch.float32, "cpu", cfg, batch=batch)
    dense = DenseKVStore(L, HKV, D, torch.float32, "cpu", batch=batch)
    assert isinstance(tiered, KVStore)
    for i, (op, t) in enumerate(SCRIPT):
        if op == "t":
            tiered.truncate(t)
            dense.truncate(t)
            for layer in range(L):
                for x, y in zip(tiered.read_layer(layer), dense.read_layer(layer)):
                    assert torch.equal(x, y)
            continue
        for layer in range(L):
            k, v = _kv(t, seed=100 * i + layer, b=batch)
            tiered.append(layer, k, v)
            dense.append(layer, k, v)
            _check(tiered, dense, layer, min(t, 5), seed=i, b=batch)
    stats = tiered.stats()
    assert stats["tokens"] == dense.layer_len(0)
    assert stats["hits"] + stats["misses"] > 0
    tiered.close()
    assert tiered.spill_files == []


def test_chunks_emitted_together_land_in_their_slots():
    """A prefill append places many chunks at once (runs of consecutive GPU and host slots copied in
    one go); every byte must still be where the store says: each resident chunk's GPU slot (through
    the block table) holds it, and reading the layer back gives what was appended."""
    cfg = _cfg(budget=5)
    tiered = TieredKVStore(L, HKV, D, torch.float32, "cpu", cfg)
    dense = DenseKVStore(L, HKV, D, torch.float32, "cpu")
    for i, t in enumerate([150, 1, 37, 9]):
        for layer in range(L):
            k, v = _kv(t, seed=10 * i + layer)
            tiered.append(layer, k, v)
            dense.append(layer, k, v)
    for layer in range(L):
        k, v = dense.read_layer(layer)
        m = tiered.n_chunks(layer)
        slots = tiered.lookup(layer, torch.arange(m).view(1, -1))[0]
        assert sum(tiered.is_resident(layer, j) for j in range(m)) == tiered.slot_budget(layer) == 5
        for j in range(m):
            a = tiered.layout.chunk_start(j)
            if tiered.is_resident(layer, j):
                gk, gv = tiered.pool.gather(slots[j : j + 1])
                assert torch.equal(gk, k[0, :, a : a + 8]) and torch.equal(gv, v[0, :, a : a + 8])
            else:
                assert int(slots[j]) == -1
        _check(tiered, dense, layer, 1, seed=layer)
    assert tiered.stats()["chunks"] == L * ((197 - 3 - 8) // 8)
    tiered.close()


@pytest.mark.parametrize("budget", [2, 64])  # rounds; one round (plain SDPA path)
def test_sliding_window_and_bf16(budget):
    cfg = _cfg(budget=budget, host_chunks=3)
    tiered = TieredKVStore(L, HKV, D, torch.bfloat16, "cpu", cfg)
    dense = DenseKVStore(L, HKV, D, torch.bfloat16, "cpu")
    k, v = _kv(90, 0, dtype=torch.bfloat16)
    tiered.append(0, k, v)
    dense.append(0, k, v)
    for sw in (None, 5, 20, 64):
        for lq in (1, 4):
            _check(tiered, dense, 0, lq, seed=sw or 0, sw=sw, atol=2e-2)
    assert tiered.stats()["disk_chunks"] > 0 and (tiered.stats()["misses"] == 0) == (budget == 64)
    tiered.close()


def test_per_head_selection():
    cfg = _cfg(budget=4)
    tiered = TieredKVStore(L, HKV, D, torch.float32, "cpu", cfg)
    k, v = _kv(80, 1)  # sinks 3 + 8 chunks of 8 (positions 3..66) + window 13
    tiered.append(0, k, v)
    select = torch.tensor([[1, 5, -1], [5, 6, 0]])  # KV head 0: chunks 1, 5; head 1: 5, 6, 0
    q = torch.randn(1, HKV * 2, 1, D)
    got = tiered.attend(0, q, 0.3, select=select)
    for h in range(HKV):
        keep = list(range(3)) + list(range(67, 80))
        for c in select[h].tolist():
            if c >= 0:
                keep += list(range(3 + 8 * c, 3 + 8 * c + 8))
        idx = torch.tensor(sorted(keep))
        want = causal_prefill_attention(q[:, 2 * h : 2 * h + 2], k[:, h : h + 1, idx], v[:, h : h + 1, idx], 0.3)
        torch.testing.assert_close(got[:, :, 2 * h : 2 * h + 2], want, atol=2e-6, rtol=1e-4)
    tiered.close()


def test_half_spilled_to_disk_is_identical_to_all_in_memory():
    n_chunks = (200 - 3 - 8) // 8  # 23 chunks per layer, 46 in all
    stores = [TieredKVStore(L, HKV, D, torch.float32, "cpu", _cfg(budget=5, host_chunks=h))
              for h in (None, n_chunks)]  # fmt: skip
    for layer in range(L):
        k, v = _kv(200, layer)
        for s in stores:
            s.append(layer, k, v)
    assert stores[0].stats()["disk_chunks"] == 0
    assert stores[1].stats()["disk_chunks"] == n_chunks  # half of 2 x 23
    q = torch.randn(1, HKV * 2, 1, D)
    for step in range(3):
        outs = [s.attend(step % L, q, 0.2) for s in stores]
        assert torch.equal(outs[0], outs[1])
    st = stores[1].stats()
    assert st["misses_disk"] > 0 and st["disk_bytes"] == n_chunks * stores[1].layout.chunk_bytes
    files = stores[1].spill_files
    assert files and all(os.stat(f).st_mode & 0o777 == 0o600 for f in files)
    for s in stores:
        s.close()
    assert not any(os.path.exists(f) for f in files)


def test_pinning_fetches_and_stats_count_bytes():
    tiered = TieredKVStore(L, HKV, D, torch.float32, "cpu", _cfg(budget=4, host_chunks=64))
    k, v = _kv(100, 2)
    tiered.append(1, k, v)  # 3 sinks + 11 chunks + 9 window; 4 resident after prefill
    hot = [j for j in range(11) if tiered.is_resident(1, j)]
    cold = [j for j in range(11) if j not in hot][:2]
    assert len(hot) == tiered.slot_budget(1) == 4 and not tiered.all_resident(1)
    before = tiered.version(1)
    slots = tiered.pin(1, cold)  # two misses from host, evicting two resident chunks
    tiered.done(1, pinned=True)
    assert all(tiered.is_resident(1, j) for j in cold) and tiered.version(1) != before
    assert torch.equal(tiered.lookup(1, torch.tensor([cold]))[0], slots)
    st = tiered.stats()
    assert st["misses"] == 2 and st["misses_host"] == 2 and st["evictions"] == 2
    lay = tiered.layout
    assert tiered.edge(1).shape == (2, HKV, lay.edge_capacity, D)
    assert torch.equal(tiered.edge(1)[0, :, :3], k[0, :, :3])  # the sinks
    assert st["gpu_bytes"] == 4 * lay.chunk_bytes + (3 + 9) * lay.token_bytes
    assert st["host_bytes"] == 11 * lay.chunk_bytes and st["disk_bytes"] == 0
    assert tiered.spec.gpu_slots == (4,) * L and tiered.spec.host_chunks == 64
    tiered.close()
    with pytest.raises(RuntimeError, match="closed"):
        tiered.attend(1, torch.randn(1, 4, 1, D), 0.1)


def test_a_corrupt_disk_chunk_is_not_left_resident(tmp_path):
    """A fetch that fails its checksum raises and leaves no GPU copy behind: once the bytes are
    repaired the chunk is read again from disk, not served from a slot that holds other bytes."""
    from offload.tiers.codec import CorruptChunkError

    cfg = _cfg(host_chunks=0, budget=2, disk_dir=str(tmp_path))  # every chunk on disk
    store = TieredKVStore(L, HKV, D, torch.float32, "cpu", cfg)
    k, v = _kv(60, seed=5)
    store.append(0, k, v)  # chunks 0..5; prefill fills the two slots with chunks 0 and 1
    assert not store.is_resident(0, 2)
    path, at = store.spill_files[0], 2 * store.layout.chunk_bytes + 7  # a byte of chunk 2 (raw records)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(CorruptChunkError):
        store.pin(0, [2])
    assert not store.is_resident(0, 2)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(byte)
    slots = store.pin(0, [2])
    p0 = store.layout.chunk_start(2)
    assert torch.equal(store.pool.kv[slots[0], 0], k[0, :, p0 : p0 + store.layout.chunk])
    store.done(0, pinned=True)
    store.close()
