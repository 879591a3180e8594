"""The token-granular hot set (offload/tiers/token_cache.py, token_fetch.py): slots found and taken
on the device, least recently read first and never a hit of the same step; the rows it holds are the
tiers' bytes (from the host pool, disk, and resident chunks); a store whose context outgrows its chunk
slots decodes token selections through it exactly as rounds over the same selection, with and
without the rest, kept or fresh selections, after a truncate; more picks than slots go the rounds'
way; and `StoreSpec` gives it the hot set only where chunk slots cannot hold the context."""

import functools
import os

import pytest
import torch

from offload import OffloadConfig
from offload.attention import decode_attend
from offload.sparse import SparseConfig
from offload.sparse.policies.bound import Bound
from offload.sparse.policies.token import Token
from offload.store_spec import STAGING_CHUNKS, StoreSpec
from offload.tiers.token_cache import TokenCache
from offload.tiers.store import TieredKVStore

L, HKV, D, C, N = 3, 2, 16, 8, 300
PER_CHUNK = 2 * HKV * C * D * 4
INDEXES = ["map", "sort"]  # a CPU's default, CUDA's
DEVICE = torch.device(os.environ.get("OFFLOAD_KERNEL_DEVICE", "cpu"))


@pytest.fixture(params=INDEXES)
def index(request, monkeypatch):
    """Stores built in the test find rows by this index."""
    monkeypatch.setattr("offload.tiers.store.TokenCache", functools.partial(TokenCache, index=request.param))
    return request.param


def _fill(cache, layer, select, valid=None):
    """One step of the cache as the store runs it, with rows that name their key: [2, n, D] of
    (key, -key) in every column. Returns the slots [R, k]."""
    keys = cache.keys(select)
    slot, hit = cache.lookup(layer, keys, int(select.max()) + 1)
    miss = ~hit if valid is None else ~hit & valid
    n_miss = int(miss.sum())
    new = cache.admit(layer, keys, miss, n_miss)
    mk = keys.reshape(-1)[miss.reshape(-1)].float()
    cache.write(new, torch.stack([mk, -mk])[:, :, None].expand(2, n_miss, D))
    flat = slot.reshape(-1).clone()
    flat[miss.reshape(-1)] = new
    return flat.view(select.shape), hit


@pytest.mark.parametrize("index", INDEXES)
def test_misses_get_slots_then_hit_with_their_rows(index):
    cache = TokenCache(2, 6, D, torch.float32, "cpu", index)
    select = torch.tensor([[3, 5], [3, 7]])
    slots, hit = _fill(cache, 1, select)
    assert not hit.any() and len(set(slots.flatten().tolist())) == 4
    again, hit = _fill(cache, 1, select)
    assert hit.all() and torch.equal(again, slots)
    rows = cache.gather(slots)  # [2, R, k, D]
    keys = cache.keys(select).float()
    assert torch.equal(rows[0, :, :, 0], keys) and torch.equal(rows[1, :, :, 0], -keys)
    assert cache.held(1) == 4 and cache.held(0) == 0  # layers do not share slots
    assert cache.counters == {"token_hits": 0, "token_misses": 4, "token_evictions": 0, "token_resplits": 0,
                              "token_ahead": 0, "token_ahead_hits": 0}


@pytest.mark.parametrize("index", INDEXES)
def test_least_recently_read_goes_first_and_a_hit_never_does(index):
    cache = TokenCache(1, 4, D, torch.float32, "cpu", index)
    a, _ = _fill(cache, 0, torch.tensor([[0, 1, 2, 3]]))  # full
    _fill(cache, 0, torch.tensor([[2, 3]]))  # 2 and 3 read again: 0 and 1 are the oldest
    got, hit = _fill(cache, 0, torch.tensor([[3, 8, 9]]))
    assert hit.tolist() == [[True, False, False]]
    assert set(got[0, 1:].tolist()) == {int(a[0, 0]), int(a[0, 1])}  # 0's and 1's slots, not 2's
    assert got[0, 0] == a[0, 3]
    _, hit = _fill(cache, 0, torch.tensor([[2, 3, 8, 9]]))
    assert hit.all()
    assert cache.counters["token_evictions"] == 2
    with pytest.raises(ValueError, match="5 misses for 4 token slots"):
        cache.admit(0, cache.keys(torch.arange(10, 15).view(1, 5)), torch.ones(1, 5, dtype=torch.bool), 5)


@pytest.mark.parametrize("index", INDEXES)
def test_padding_stands_in_and_forget_drops_positions(index):
    cache = TokenCache(1, 8, D, torch.float32, "cpu", index)
    select = torch.tensor([[4, 9, 4], [6, 6, 6]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    _fill(cache, 0, select, valid)
    assert cache.held(0) == 3 and cache.counters["token_misses"] == 3
    epoch = cache.epoch(0)
    cache.forget(0, first=6)  # 9 of row 0 and 6 of row 1 go, 4 stays
    assert cache.held(0) == 1 and cache.epoch(0) != epoch
    _, hit = _fill(cache, 0, select, valid)
    assert hit.tolist() == [[True, False, True], [False, False, False]]


@pytest.mark.parametrize("index", INDEXES)
def test_layers_picking_more_than_their_share_get_it_when_the_total_allows(index):
    cache = TokenCache(3, 10, D, torch.float32, "cpu", index)
    _fill(cache, 2, torch.arange(6).view(1, 6))
    assert cache.fit(2, 6) and cache.held(2) == 6  # within its 10: nothing moves
    assert cache.fit(0, 15) and cache.slots(0) >= 15  # 15 > 10: split anew, the 6 rows of layer 2 forgotten
    assert cache.held(2) == 0 and cache.slots(2) >= 6 and sum(map(cache.slots, range(3))) == 30
    assert cache.fit(1, 8) and [cache.slots(i) >= n for i, n in enumerate((15, 8, 6))] == [True] * 3
    assert not cache.fit(2, 8)  # 15 + 8 + 8 > 30
    assert cache.counters["token_resplits"] == 2
    cache.expect([4, 20, 5])  # the plan's picks for every layer: split for them at once
    assert [cache.slots(i) >= n for i, n in enumerate((4, 20, 5))] == [True] * 3
    cache.expect([4, 20, 5])  # nothing outgrows its range: no new split
    assert cache.counters["token_resplits"] == 3 and cache.fit(1, 20)
    with pytest.raises(ValueError, match="a token cache needs at least one slot"):
        TokenCache(3, 0, D, torch.float32, "cpu", index)
    with pytest.raises(ValueError, match="index must be"):
        TokenCache(3, 1, D, torch.float32, "cpu", "hash")


def _cfg(slots, host_chunks=None, ctx=1024, budget=64, policy=None, **kw):
    kw.setdefault("rest", None)
    sparse = SparseConfig(budget=budget, policy=policy or Token(rank=4), whole_below=0, **kw)
    host = None if host_chunks is None else host_chunks * PER_CHUNK
    return OffloadConfig(kv_chunk=C, sinks=4, window=8, hot_set_bytes=slots * L * PER_CHUNK, host_mem=host,
                         sparse=sparse, ctx=ctx)  # fmt: skip


def _store(cfg, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(L, HKV, D, torch.float32, device, config=cfg)
    for layer in range(L):
        k, v = (torch.randn(1, HKV, N, D, generator=g).to(device) for _ in range(2))
        st.append(layer, k, v)
        st.prefill_observer(layer, torch.randn(1, 2 * HKV, 8, D, generator=g).to(device), k, D**-0.5, 0.9)
    return st


def _steps(st, n_steps, seed=1, grow=False):
    """Decode steps checked against rounds over the step's own selection (the exact reference)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        for layer in range(L):
            if grow:  # a decoded token: a chunk leaves the window every C steps
                st.append(layer, torch.randn(1, HKV, 1, D, generator=g), torch.randn(1, HKV, 1, D, generator=g))
            n = st.layer_len(layer)
            q = torch.randn(1, 2 * HKV, 1, D, generator=g)
            chosen = st.selector.select(layer, q[:, :, 0], st.n_chunks(layer), n, 0.3)
            got = decode_attend(st, layer, q, 0.3, None)
            want = st.attend(layer, q, 0.3, select=chosen)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("host", [None, 10], ids=["host", "host-and-disk"])
def test_step_reads_the_cache_as_rounds_read_the_tiers(host, index, tmp_path):
    st = _store(_cfg(20, host).replace(disk_dir=str(tmp_path)))
    assert st.token_cache is not None and st.spec.gpu_slots == (STAGING_CHUNKS,) * L
    _steps(st, 3, grow=True)
    s = st.stats()
    assert s["rounds"] == 0 and s["token_misses"] > 0 and s["token_hits"] > 0
    assert (s["disk_chunks"] > 0) == (host is not None)
    assert all(st.token_cache.held(layer) <= st.spec.token_slots for layer in range(L))
    st.truncate(N - 3 * C)  # rows past the cut are forgotten; the steps stay exact
    assert st.token_cache.held(0) <= st.spec.token_slots
    _steps(st, 2, seed=2)
    assert st.stats()["rounds"] == 0
    st.close()
    assert not list(tmp_path.rglob("*.kv"))


@pytest.mark.parametrize("rest", [None, "k4v4"])
def test_the_cache_step_equals_the_all_resident_step(rest):
    """The same selections over the token cache and over every chunk resident (a hot set holding the
    context): the same outputs, the rest merged in or not, across chunks leaving the window. On
    OFFLOAD_KERNEL_DEVICE (bench/gpu_check.sh: cuda) — there the token-gather kernel reads both, the
    cache through its pool views, its rows found by the sorted owners and copied from host memory."""
    cfg = _cfg(20, rest=rest).replace(device=str(DEVICE))
    cached, resident = _store(cfg, device=DEVICE), _store(cfg.replace(hot_set_bytes=200 * L * PER_CHUNK), device=DEVICE)
    assert cached.token_cache is not None and resident.token_cache is None and resident.all_resident(0)
    assert cached.token_cache.index == ("sort" if DEVICE.type == "cuda" else "map")
    g = torch.Generator().manual_seed(3)
    for _ in range(2 * C):
        for layer in range(L):
            k, v, q = (torch.randn(1, h, 1, D, generator=g).to(DEVICE) for h in (HKV, HKV, 2 * HKV))
            outs = []
            for st in (cached, resident):
                st.append(layer, k, v)
                outs.append(decode_attend(st, layer, q, 0.3, None))
            torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
    assert cached.stats()["rounds"] == 0 and cached.stats()["token_misses"] > 0


def test_a_kept_selection_fetches_nothing_again():
    st = _store(_cfg(20, select_every=4))
    g = torch.Generator().manual_seed(4)

    def step():
        for layer in range(L):
            decode_attend(st, layer, torch.randn(1, 2 * HKV, 1, D, generator=g), 0.3, None)

    step()
    misses = st.stats()["token_misses"]
    for _ in range(3):  # the same selections (kept): the same slots, no new rows
        step()
    assert st.stats()["token_misses"] == misses and st.stats()["selections_kept"] == 3 * L
    step()  # made afresh: new picks, new rows
    assert st.stats()["token_misses"] > misses


def test_more_picks_than_slots_go_the_rounds_way():
    st = _store(_cfg(2, budget=120))  # 2 chunk slots' bytes: 32 rows a layer, 240 picks
    assert 0 < st.spec.token_slots < 2 * 120
    _steps(st, 2)
    s = st.stats()
    assert s["rounds"] == 2 * L and s["token_misses"] == 0


def test_spec_gives_rows_only_where_chunk_slots_cannot_hold_the_context():
    def spec(cfg):
        return StoreSpec.derive(cfg, L, HKV, D, torch.float32, "cpu")

    s = spec(_cfg(20))  # 20 slots of 8 tokens < the body of 1,024 tokens
    row = StoreSpec.token_slot_bytes(D, 4)  # a row's k and v, and its index
    assert row == 2 * D * 4 + 16
    assert s.token_slots == 20 * L * PER_CHUNK // (row * L) and s.gpu_slots == (STAGING_CHUNKS,) * L
    assert spec(_cfg(200)).token_slots == 0  # the whole context fits chunk slots: all resident
    assert spec(_cfg(20, ctx=None)).token_slots == 0  # no context to plan for
    assert spec(_cfg(20, policy=Bound(rank=4))).token_slots == 0  # chunk selections read chunks
    assert spec(_cfg(20, ctx=20 * C + 12)).token_slots == 0  # exactly 20 body chunks: they fit
    assert spec(_cfg(20, ctx=21 * C + 12)).token_slots > 0


def test_rows_fetched_from_every_tier_are_the_stored_bytes(tmp_path, monkeypatch):
    """Picks whose chunks sit in the chunk slots, the host pool and on disk (decoded two records at a
    time: several batches): the cache's rows equal the layer's tokens as read back whole."""
    monkeypatch.setattr("offload.tiers.token_fetch.DISK_BATCH", 2)
    st = _store(_cfg(20, 10).replace(disk_dir=str(tmp_path)))
    layer, lay = 1, st.layout
    assert st.stats()["disk_chunks"] > 3 and any(st.is_resident(layer, j) for j in range(st.n_chunks(layer)))
    g = torch.Generator().manual_seed(7)
    body = st.n_chunks(layer) * C
    select = torch.stack([torch.randperm(body, generator=g)[:150] for _ in range(HKV)])  # [R, 150]
    slots = st.resident_tokens(layer, select, None)
    k, v = st.read_layer(layer)  # [1, HKV, n, D]
    got = st.token_cache.gather(slots)  # [2, R, 150, D]
    for r in range(HKV):
        pos = select[r] + lay.sinks
        assert torch.equal(got[0, r], k[0, r, pos]) and torch.equal(got[1, r], v[0, r, pos])
    assert st.stats()["token_misses"] == 2 * 150
    again = st.resident_tokens(layer, select, None)  # all held now: the same slots, nothing fetched
    assert torch.equal(again, slots) and st.stats()["token_misses"] == 2 * 150
