"""The lookahead fetch (tiers/lookahead.py): rows a layer is expected to pick, fetched while the layer
below runs, change where a step's rows come from, never what it reads — the real SmolLM2 with a
token cache, host and disk homes: logits equal to the same decode without it, bit for bit, with
fewer rows fetched on demand; a failed fetch raises and leaves no slot claiming a row it lacks."""

import dataclasses
import threading

import pytest
import torch
from test_token_cache import DEVICE, HKV, L, D, N, _cfg, _store  # this folder is on sys.path (rootdir import)

from offload.attention import decode_attend
from offload.engine import Engine
from offload.eval.recall import natural_ids
from offload.sparse import SparseConfig
from offload.store_spec import StoreSpec
from offload.tiers import store_view
from offload.tiers.store_view import StoreView
from offload.tiers.token_cache import TokenCache

N_PROMPT, STEPS, BUDGET = 600, 4, 32


def _model(model, tmp_path, lookahead, name):
    n_layers, n_kv, d = model.kv_shape()
    sparse = SparseConfig(budget=BUDGET, policy="token", lookahead=lookahead)
    base = model.config.replace(sparse=sparse, ctx=N_PROMPT + 64, kv_store="tiered")
    rows = 4 * BUDGET * n_kv * n_layers  # room for 4x the budget's rows
    chunk = StoreSpec.chunk_of(base)
    host = (N_PROMPT // chunk // 2) * n_layers * 2 * n_kv * chunk * d * 4  # half the body on disk
    cfg = base.replace(hot_set_bytes=rows * StoreSpec.token_slot_bytes(d, 4), host_mem=host,
                       disk_dir=str(tmp_path / name))  # fmt: skip
    return dataclasses.replace(model, config=cfg)


def _decode(m, ids, tokens=None):
    """Logits of STEPS greedy steps (fed `tokens` when given) and the store's counters."""
    store = m.new_store()
    assert store.token_cache is not None
    try:
        engine, out = Engine(m, store), []
        logits = engine.prefill(ids)
        for i in range(STEPS):
            tok = int(logits.argmax()) if tokens is None else tokens[i]
            logits = engine.decode(tok)
            out.append((tok, logits))
        return out, store.stats()
    finally:
        store.close()


def test_lookahead_reads_what_the_step_reads_and_fetches_less_on_demand(model, tmp_path):
    ids = natural_ids(model.tokenizer, N_PROMPT)
    off, kv_off = _decode(_model(model, tmp_path, False, "off"), ids)
    on, kv_on = _decode(_model(model, tmp_path, True, "on"), ids, [t for t, _ in off])
    for (_, a), (_, b) in zip(off, on):
        assert torch.equal(a, b)
    assert kv_off["token_ahead"] == 0 and kv_off["ahead_wait_s"] == 0
    assert kv_on["token_ahead"] > 0 and 0 < kv_on["token_ahead_hits"] <= kv_on["token_ahead"]
    assert kv_on["token_misses"] < kv_off["token_misses"]  # misses: what was fetched on demand
    assert kv_on["misses_disk"] + kv_on["misses_host"] == 0 or kv_on["disk_chunks"] > 0
    assert kv_on["rounds"] == kv_off["rounds"] == 0


@pytest.mark.parametrize("threaded", [True, False], ids=["worker", "inline"])
def test_a_failed_fetch_raises_and_leaves_its_slots_empty(threaded, tmp_path, monkeypatch):
    st = _store(_cfg(20, 10, lookahead=True).replace(disk_dir=str(tmp_path)))
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2 * HKV, 1, D, generator=g)
    for layer in range(L):  # a first step: every layer reads the cache
        decode_attend(st, layer, q, 0.3, None)
    read, dropped, drop = store_view.read_rows, [], TokenCache.drop
    ahead = threading.local()  # set while the lookahead's fill runs

    def broken(*args, **kwargs):  # the lookahead's reads fail, the step's do not
        if getattr(ahead, "on", False):
            raise OSError("a corrupt record")
        return read(*args, **kwargs)

    fetch = StoreView.fetch_ahead

    def flagged(self, layer, guess):  # the fill it returns runs with the flag up, in whatever thread
        got = fetch(self, layer, guess)
        if got is None:
            return None
        slots, fill = got

        def run():
            ahead.on = True
            try:
                fill()
            finally:
                ahead.on = False

        return slots, run

    def spy_drop(self, layer, slots):
        dropped.append(slots.clone())
        drop(self, layer, slots)

    monkeypatch.setattr(store_view, "read_rows", broken)
    monkeypatch.setattr(TokenCache, "drop", spy_drop)
    monkeypatch.setattr(StoreView, "fetch_ahead", flagged)
    sparse = st.sparse_attention
    sparse.ahead.threaded = threaded  # True: the worker thread, as on CUDA (a CPU fetches inline)
    assert sparse.wants_lookahead(1)
    sparse.lookahead(1, -q, 0.3)  # another query: rows the cache lacks
    if threaded:
        decode_attend(st, 0, q, 0.3, None)  # layer 0 attends, then layer 1's guess is fetched: it fails
        with pytest.raises(OSError, match="corrupt"):
            st.append(1, *(torch.randn(1, HKV, 1, D, generator=g) for _ in range(2)))  # waits for it
    else:
        with pytest.raises(OSError, match="corrupt"):
            decode_attend(st, 0, q, 0.3, None)
    assert len(dropped) == 1 and (st.token_cache.owner[dropped[0]] == -1).all()
    assert st.layer_len(1) == N  # the append never happened
    monkeypatch.undo()
    st.append(1, *(torch.randn(1, HKV, 1, D, generator=g) for _ in range(2)))
    assert decode_attend(st, 1, q, 0.3, None).isfinite().all()
    st.close()


def test_ahead_rows_count_once_when_read_and_drop_empties_slots():
    cache = TokenCache(2, 8, 4, torch.float32, "cpu", index="sort")
    keys = TokenCache.keys(torch.tensor([[0, 1, 2, 3]]))
    _, hit = cache.lookup(1, keys, 16)
    cache.fit(1, 2)  # the layer's last step read 2 rows: room for 6
    assert cache.room(1) == 6
    new = cache.admit(1, keys, ~hit, 4, ahead=True)
    cache.write(new, torch.ones(2, 4, 4))
    _, hit = cache.lookup(1, keys, 16, guess=True)  # a guess finds them held: not a read
    assert hit.all() and cache.counters["token_ahead_hits"] == 0
    slot, hit = cache.lookup(1, keys[:, :3], 16)
    assert hit.all() and cache.counters["token_ahead"] == 4 and cache.counters["token_ahead_hits"] == 3
    cache.lookup(1, keys, 16)  # read again: counted once; the fourth now read for the first time
    assert cache.counters["token_ahead_hits"] == 4 and cache.counters["token_misses"] == 0
    cache.drop(1, new[:2])
    _, hit = cache.lookup(1, keys, 16)
    assert hit.tolist() == [[False, False, True, True]] and cache.held(1) == 2


@pytest.mark.parametrize("host,threaded", [(None, False), (10, False), (10, True)],
                         ids=["host", "host-and-disk", "host-and-disk-worker"])  # fmt: skip
def test_a_store_fetching_ahead_attends_as_one_that_does_not(host, threaded, tmp_path):
    """Store level, as the engine drives it (the guess for layer l+1 noted before layer l runs, its
    fetch started when layer l has attended, waited for at layer l+1's append): the same outputs
    with and without the lookahead over random KV — guesses half right (the next layer's query plus
    noise). On OFFLOAD_KERNEL_DEVICE (bench/gpu_check.sh: cuda): the worker copies on the copy stream."""
    stores = [_store(_cfg(20, host, lookahead=on).replace(disk_dir=str(tmp_path / str(on)), device=str(DEVICE)),
                     device=DEVICE) for on in (False, True)]  # fmt: skip
    if threaded:
        stores[1].sparse_attention.ahead.threaded = True  # the worker thread on a CPU too
    g = torch.Generator().manual_seed(4)
    for _ in range(12):
        ks, vs, qs = ([torch.randn(1, h, 1, D, generator=g).to(DEVICE) for _ in range(L)] for h in (HKV, HKV, 2 * HKV))
        guesses = [q + 0.5 * torch.randn(q.shape, generator=g).to(DEVICE) for q in qs]
        outs = [[], []]
        for i, st in enumerate(stores):
            sparse = st.sparse_attention
            for layer in range(L):
                if layer + 1 < L and sparse.wants_lookahead(layer + 1):
                    sparse.lookahead(layer + 1, guesses[layer + 1], 0.3)
                st.append(layer, ks[layer], vs[layer])
                outs[i].append(decode_attend(st, layer, qs[layer], 0.3, None))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    off, on = (st.stats() for st in stores)
    assert on["token_ahead"] > 0 and on["token_ahead_hits"] > 0 and on["token_misses"] < off["token_misses"]
    assert on["rounds"] == off["rounds"] == 0 and (on["disk_chunks"] > 0) == (host is not None)
    for st in stores:
        st.close()
    assert not list(tmp_path.rglob("*.kv"))
