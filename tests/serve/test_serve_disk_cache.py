"""DiskCache on real KV from the embedded model: longest-prefix lookup, reload, LRU under a byte
bound, sessions covered by a longer one removed, damaged entries and crash leftovers dropped."""

import threading

import pytest

from offload.sampling import SamplingParams
from offload.serve.disk_cache import DiskCache
from offload.serve.slots import Slot


def _slot(model, text_or_ids):
    slot = Slot(model)
    ids = model.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    for _ in slot.generate(ids, max_new_tokens=1, sampling=SamplingParams(), stop=(), cancelled=threading.Event()):
        pass
    return slot


@pytest.fixture()
def cache_for(model, tmp_path):
    def make(max_bytes=1 << 40):
        return DiskCache(tmp_path / "c", model.fingerprint(), max_bytes, model.config, model.device, model.dtype)

    return make


def test_save_lookup_and_reload(model, cache_for):
    cache = cache_for()
    a = _slot(model, "Alpha document. " * 20)
    path = cache.save(a.store, a.tokens)
    ids = a.tokens + [42, 43]
    found, n = cache.best(ids)
    assert found == path and n == len(a.tokens)
    store, tokens = cache.load(path)
    k0, _ = store.read_layer(3)
    assert tokens == a.tokens and k0.equal(a.store.read_layer(3)[0])
    assert len(cache_for()) == 1  # a new DiskCache (a restart) indexes it from the headers


def test_longer_prefix_replaces_and_lru_bound(model, cache_for, tmp_path):
    cache = cache_for()
    a = _slot(model, "Beta notes. " * 20)
    cache.save(a.store, a.tokens)
    longer = _slot(model, a.tokens + model.encode(" And more." * 5))  # a's tokens are its prefix
    cache.save(longer.store, longer.tokens)
    assert len(cache) == 1 and cache.best(a.tokens)[1] == len(a.tokens)
    size = sum(f.stat().st_size for f in next(iter((tmp_path / "c").glob("*/*.session"))).iterdir())
    small = cache_for(max_bytes=int(size * 2.5))
    for word in ("Gamma", "Delta"):  # as long as `longer`, so each session has its size
        s = _slot(model, model.encode(word)[:1] + longer.tokens[1:])
        small.save(s.store, s.tokens)
    assert len(small) == 2 and small.best(longer.tokens)[1] < len(a.tokens)  # the oldest went first


def test_damaged_sessions_and_leftovers_are_dropped(model, cache_for, tmp_path):
    cache = cache_for()
    a = _slot(model, "Epsilon. " * 20)
    path = cache.save(a.store, a.tokens)
    (path / "header.json").write_text("{broken")
    leftover = path.parent / (path.name + ".tmp-abc123")
    leftover.mkdir()
    again = cache_for()
    assert len(again) == 0 and not path.exists() and not leftover.exists()
