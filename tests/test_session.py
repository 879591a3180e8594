"""Sessions: save -> load gives the same KV and tokens into either store; every kind of bad input
raises SessionError (and nothing else); files are private; a failed save leaves the old session."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from offload.config import OffloadConfig
from offload.errors import DiskFullError, SessionError
from offload.kvstore import DenseKVStore
from offload.session import load_session, model_fingerprint, read_session_info, save_session
from offload.tiers.store import TieredKVStore

L, HKV, D = 3, 2, 8
FP = "f" * 64
TIERED = OffloadConfig(kv_store="tiered", kv_chunk=8, sinks=2, window=4, host_mem=4 * 2 * HKV * 8 * D * 2)


def _store(kind="dense", dtype=torch.float32, n=50):
    g = torch.Generator().manual_seed(0)
    if kind == "dense":
        s = DenseKVStore(L, HKV, D, dtype, "cpu")
    else:
        s = TieredKVStore(L, HKV, D, dtype, "cpu", TIERED)
    for layer in range(L):
        s.append(layer, torch.randn(1, HKV, n, D, generator=g).to(dtype), torch.randn(1, HKV, n, D, generator=g).to(dtype))
    return s


def _same(a, b):
    assert a.n_layers == b.n_layers
    for layer in range(a.n_layers):
        for x, y in zip(a.read_layer(layer), b.read_layer(layer)):
            assert x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize("src,dst,dtype", [("dense", "dense", torch.float32), ("tiered", "tiered", torch.bfloat16),
                                           ("dense", "tiered", torch.float16), ("tiered", "dense", torch.float32)])  # fmt: skip
def test_round_trip(tmp_path, src, dst, dtype):
    store = _store(src, dtype)
    tokens = list(range(7, 57))
    save_session(tmp_path / "s", store, tokens, FP, meta={"messages": [{"role": "user", "content": "hi"}]})
    cfg = TIERED if dst == "tiered" else OffloadConfig()
    loaded, toks = load_session(tmp_path / "s", FP, cfg, device="cpu")
    assert toks == tokens
    _same(store, loaded)
    info = read_session_info(tmp_path / "s")
    assert info.n_tokens == 50 and info.kv_dtype == str(dtype)[6:] and info.meta["messages"][0]["content"] == "hi"
    for p in [tmp_path / "s", *(tmp_path / "s").iterdir()]:
        assert stat.S_IMODE(os.stat(p).st_mode) == (0o700 if p.is_dir() else 0o600)
    store.close()
    loaded.close()
    assert not getattr(loaded, "spill_files", [])


def test_resave_replaces_atomically_and_never_clobbers_other_paths(tmp_path):
    path = tmp_path / "s"
    save_session(path, _store(n=10), [1] * 10, FP)
    save_session(path, _store(n=20), [2] * 20, FP)
    store, toks = load_session(path, FP)
    assert toks == [2] * 20 and store.layer_len(0) == 20
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temp or old directories left
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SessionError, match="not an offload session"):
        save_session(tmp_path / "notes.txt", store, [], FP)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_failed_save_leaves_old_session(tmp_path):
    path = tmp_path / "s"
    save_session(path, _store(n=10), [1] * 10, FP)

    class Broken(DenseKVStore):
        def read_layer(self, layer):
            if layer == 2:
                raise OSError(28, "No space left on device")
            return super().read_layer(layer)

    broken = Broken(L, HKV, D, torch.float32, "cpu")
    for layer in range(L):
        broken.append(layer, torch.zeros(1, HKV, 5, D), torch.zeros(1, HKV, 5, D))
    with pytest.raises(DiskFullError, match="disk is full"):  # its own error: exit 7, not "bad session"
        save_session(path, broken, [0] * 5, FP)
    assert sorted(os.listdir(tmp_path)) == ["s"]
    assert load_session(path, FP)[1] == [1] * 10


def _corrupt_header(path, **changes):
    header = json.loads((path / "header.json").read_text())
    header["body"].update(changes)
    text = json.dumps(header["body"], sort_keys=True)
    import zlib

    header["crc32"] = zlib.crc32(text.encode())
    (path / "header.json").write_text(json.dumps(header))


def _flip(file: Path, offset: int):
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


BAD = {
    "other model": lambda p: None,  # loaded with another fingerprint below
    "version": lambda p: _corrupt_header(p, version=99),
    "not a session": lambda p: (p / "header.json").write_text('{"hello": 1}'),
    "no header": lambda p: (p / "header.json").unlink(),
    "header byte": lambda p: _flip(p / "header.json", 40),
    "header garbage": lambda p: (p / "header.json").write_bytes(b"\xff\xfe\x00garbage"),
    "truncated": lambda p: os.truncate(p / "layer_001.kv", os.path.getsize(p / "layer_001.kv") - 3),
    "flipped byte": lambda p: _flip(p / "layer_002.kv", 100),
    "missing file": lambda p: (p / "layer_000.kv").unlink(),
    "wrong geometry": lambda p: _corrupt_header(p, head_dim=-5),
    "absurd records": lambda p: _corrupt_header(p, layers=[{"file": "../x", "size": 1, "records": [[0, 9, 0, 0]]}] * L),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("kind", ["dense", "tiered"])
def test_bad_input_raises_session_error(tmp_path, case, kind):
    path = tmp_path / "s"
    save_session(path, _store(dtype=torch.bfloat16), list(range(50)), FP)
    BAD[case](path)
    fp = "0" * 64 if case == "other model" else FP
    cfg = TIERED if kind == "tiered" else OffloadConfig()
    with pytest.raises(SessionError) as err:
        load_session(path, fp, cfg, device="cpu")
    assert str(path) in str(err.value)


def test_not_a_directory_and_missing_path(tmp_path):
    (tmp_path / "f").write_text("x")
    for p in (tmp_path / "f", tmp_path / "nothing"):
        with pytest.raises(SessionError, match="not an offload session"):
            load_session(p, FP)


def test_fingerprint_separates_models():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=50)  # fmt: skip
    w = {"a.weight": torch.ones(4, 4), "b.weight": torch.zeros(3)}
    base = model_fingerprint(cfg, w, "tok")
    assert base == model_fingerprint(cfg, dict(reversed(list(w.items()))), "tok")
    cfg2 = LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": 3})
    tuned = {"a.weight": torch.ones(4, 4) * 1.01, "b.weight": torch.zeros(3)}
    shapes = [(n, tuple(t.shape), t.dtype) for n, t in w.items()]
    others = [model_fingerprint(cfg2, w, "tok"), model_fingerprint(cfg, tuned, "tok"),
              model_fingerprint(cfg, w, "tok2"), model_fingerprint(cfg, shapes, "tok")]  # fmt: skip
    assert len({base, *others}) == 5
    cfg.use_cache = not cfg.use_cache  # a runtime switch does not change the KV
    assert model_fingerprint(cfg, w, "tok") == base
