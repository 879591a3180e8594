"""The session fuzzer's core, shared by tests/faults/test_session_fuzz.py (2,000 seeded cases in CI)
and bench/faults.py (20,000+): damage a saved session the ways a disk, a crash or a person can, load
it, and hold the loader to its contract.

The contract: `load_session` raises `SessionError`, or it returns exactly the KV that was saved (the
answer is a function of the KV, so identical KV is an identical answer). Token ids and meta may
differ only where the damaged header says so: a hand edit the loader cannot tell from the original
(a changed token id costs a re-prefill from that token at the next turn, never a wrong answer).
Any other exception, or different KV, is a bug. No model is loaded: a small real session (3 layers,
2 KV heads, head dim 8, 50 tokens, 8-token records; fp32 raw and bf16 zstd) keeps a case ~ms."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import torch
from hypothesis import strategies as st

from offload.config import OffloadConfig
from offload.errors import SessionError
from offload.kvstore import DenseKVStore
from offload.session import load_session, save_session

__all__ = ["make_original", "damage", "check", "FILES", "EXPECT"]

L, HKV, D, N, CHUNK, FP = 3, 2, 8, 50, 8, "f" * 64
EXPECT = {"n_layers": L, "n_kv_heads": HKV, "head_dim": D, "batch": 1, "vocab_size": 1000}
FILES = ["header.json"] + [f"layer_{i:03d}.kv" for i in range(L)]
CONFIG = OffloadConfig()


def make_original(root: Path, dtype: torch.dtype) -> tuple[Path, list]:
    """A saved session under `root` and its KV ([(k, v)] per layer)."""
    g = torch.Generator().manual_seed(0)
    store = DenseKVStore(L, HKV, D, dtype, "cpu")
    for layer in range(L):
        store.append(layer, *(torch.randn(1, HKV, N, D, generator=g).to(dtype) for _ in range(2)))
    path = root / f"orig-{str(dtype)[6:]}.session"
    save_session(path, store, [(7 * i) % 1000 for i in range(N)], FP,
                 meta={"messages": [{"role": "user", "content": "hi"}]}, chunk=CHUNK)  # fmt: skip
    kv = [tuple(t.clone() for t in store.read_layer(layer)) for layer in range(L)]
    return path, kv


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
_byte_op = st.tuples(st.sampled_from(["flip", "truncate", "append", "empty", "random", "delete", "symlink"]),
                     st.sampled_from(FILES), st.integers(0, 1 << 20), st.binary(max_size=64))  # fmt: skip
_header_op = st.tuples(st.sampled_from(["set", "delete", "grow"]), st.lists(st.integers(0, 60), max_size=4), _json)
damage = st.lists(st.one_of(_byte_op, _header_op), min_size=1, max_size=3)  # a case: 1-3 operations


def _apply_bytes(path: Path, op) -> None:
    kind, name, n, junk = op
    f = path / name
    if f.is_symlink() or not f.exists():  # already a link (or gone): only removing it stays simple
        if kind == "delete" and f.is_symlink():
            f.unlink()
        return
    data = f.read_bytes()
    if kind == "flip" and data:
        i = n % len(data)
        f.write_bytes(data[:i] + bytes([data[i] ^ (1 << (n % 8))]) + data[i + 1 :])
    elif kind == "truncate":
        f.write_bytes(data[: n % (len(data) + 1)])
    elif kind == "append":
        f.write_bytes(data + junk)
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "random":
        f.write_bytes(junk)
    elif kind == "delete":
        f.unlink()
    elif kind == "symlink":  # the file becomes a link to another one of the session
        f.unlink()
        f.symlink_to(FILES[n % len(FILES)])  # to itself: a link loop


def _apply_header(path: Path, op) -> None:
    """Edit the header body along a path of child indices, then write a fresh valid CRC."""
    kind, route, value = op
    f = path / "header.json"
    try:
        outer = json.loads(f.read_bytes())
        node = outer["body"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for step in route[:-1]:
        keys = sorted(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        if not keys or not isinstance(node[keys[step % len(keys)]], (dict, list)):
            break
        node = node[keys[step % len(keys)]]
    keys = sorted(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
    if keys:
        key = keys[(route[-1] if route else 0) % len(keys)]
        if kind == "set":
            node[key] = value
        elif kind == "delete":
            del node[key]
        elif isinstance(node, list):
            node.append(value)
    outer["crc32"] = zlib.crc32(json.dumps(outer["body"], sort_keys=True).encode())
    f.write_text(json.dumps(outer))


def check(original: Path, kv: list, work: Path, ops) -> str:
    """Copy `original` to `work`, apply `ops`, load. Returns the outcome ("session-error",
    "identical"); raises AssertionError on a broken contract (any other exception propagates)."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(original, work, symlinks=True)
    for op in ops:
        (_apply_bytes if len(op) == 4 else _apply_header)(work, op)
    try:
        store, _tokens = load_session(work, FP, CONFIG, device="cpu", expect=EXPECT)
    except SessionError as e:
        assert str(work) in str(e)
        return "session-error"
    try:
        for layer, (k, v) in enumerate(kv):
            got = store.read_layer(layer)
            assert torch.equal(got[0], k) and torch.equal(got[1], v), f"layer {layer}: different KV loaded"
    finally:
        store.close()
    return "identical"
