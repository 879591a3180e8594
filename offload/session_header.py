"""A session's `header.json`: reading it without ever blocking, and checking it whole.

The header is JSON `{"body": {...}, "crc32": crc of the canonical body}`. The CRC catches damage, not
edits: a header rewritten with a fresh CRC (by hand, a script, another tool) must still never crash a
later turn. So after the CRC every field is checked for type and range, the counts against each
other (layers, records per layer, tokens) and, when the caller knows it, against the model
(`expect`: layers, KV heads, head dim, vocabulary). Anything off is a `SessionError`.

Only regular files are opened (O_NOFOLLOW | O_NONBLOCK, then fstat): a FIFO or a device named
`header.json` is refused instead of blocking the save or load that looks at it."""

from __future__ import annotations

import json
import math
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SessionError
from .hybrid_store import global_layers

__all__ = ["SessionInfo", "read_session_info", "looks_like_session", "read_regular", "FORMAT", "VERSION",
           "HEADER", "DTYPES"]  # fmt: skip

FORMAT, VERSION = "offload-session", 1
HEADER = "header.json"
DTYPES = ("float32", "bfloat16", "float16")
_MAX_HEADER = 256 << 20  # a 1M-token session's header is ~10 MB
_BIG = 1 << 40  # no count or byte offset in a session gets near this


@dataclass(frozen=True)
class SessionInfo:
    """What a session's header says (validated)."""

    path: str
    fingerprint: str
    kv_dtype: str
    chunk: int
    n_tokens: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    batch: int
    layer_lens: tuple[int, ...]  # a sliding layer saves its ring (window + margin at most)
    tokens: tuple[int, ...]
    meta: dict = field(default_factory=dict)
    layers: tuple = field(default=(), repr=False)  # per layer: {"file", "size", "records"}
    sparse: dict | None = field(default=None, repr=False)  # session_sparse.py's entry
    windows: tuple[int, ...] = ()  # per layer its sliding window, 0 = global (empty: all global)


def read_regular(file: Path, limit: int) -> bytearray:
    """The bytes of `file` if it is a regular file (not a link, FIFO or device) of at most `limit`
    bytes; OSError or ValueError otherwise. Never blocks on a FIFO."""
    fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{file.name} is not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{file.name} is {st.st_size:,} bytes, more than {limit:,}")
        data = bytearray(st.st_size)  # writable: sessions view layer bytes in place (frombuffer)
        view, got = memoryview(data), 0
        while got < st.st_size:
            n = os.readv(fd, [view[got:]])
            if n == 0:
                break
            got += n
        return data[:got] if got < st.st_size else data
    finally:
        os.close(fd)


def looks_like_session(path: Path) -> bool:
    """Whether `path` holds an offload session header (damaged or not): such a path may be replaced."""
    try:
        return json.loads(read_regular(path / HEADER, _MAX_HEADER))["body"]["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_session_info(path, expect: dict | None = None, fingerprint: str | None = None) -> SessionInfo:
    """Parse and check the header of the session at `path` (no KV read). Raises SessionError.

    fingerprint: the loading model's; another model's session is refused first, by that name.
    expect: what the loading model needs ({"n_layers", "n_kv_heads", "head_dim", "vocab_size"}, any
    subset); a session that disagrees is refused here rather than failing on the next turn."""
    path = Path(path)
    try:
        if not path.is_dir():
            raise SessionError(f"{path} is not an offload session (not a directory)")
        outer = json.loads(read_regular(path / HEADER, _MAX_HEADER))
    except FileNotFoundError:
        raise SessionError(f"{path} is not an offload session (no {HEADER} in it)") from None
    except (OSError, ValueError) as e:  # PermissionError, a FIFO, not JSON, not UTF-8
        raise SessionError(f"{path}: the session header cannot be read ({e})") from None
    body = outer.get("body") if isinstance(outer, dict) else None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise SessionError(f"{path} is not an offload session (unknown header format)")
    if zlib.crc32(json.dumps(body, sort_keys=True).encode()) != outer.get("crc32"):
        raise SessionError(f"{path}: the session header is damaged (checksum mismatch)")
    if body.get("version") != VERSION:
        raise SessionError(f"{path}: session format version {body.get('version')!r}; this offload "
                           f"reads version {VERSION}. Re-create the session from the document.")  # fmt: skip
    saved = body.get("fingerprint")
    if fingerprint is not None and saved != fingerprint:
        raise SessionError(f"{path} was saved by a different model (fingerprint {str(saved)[:12]}… ≠ "
                           f"this model's {str(fingerprint)[:12]}…); re-create it with this model")  # fmt: skip
    try:
        info = _checked(body, expect or {})
    except ValueError as e:
        raise SessionError(f"{path}: the session header is inconsistent ({e}); the session cannot be "
                           "used") from None  # fmt: skip
    return SessionInfo(path=str(path), **info)


def _int(body: dict, key: str, lo: int = 0, hi: int = _BIG) -> int:
    v = body.get(key)
    if type(v) is not int or not lo <= v <= hi:  # bool and float are not counts
        raise ValueError(f"{key} must be an integer in [{lo}, {hi}], not {v!r}")
    return v


def _ints(body: dict, key: str, lo: int = 0, hi: int = _BIG) -> tuple[int, ...]:
    v = body.get(key)
    if not isinstance(v, list) or not all(type(x) is int and lo <= x <= hi for x in v):
        raise ValueError(f"{key} must be a list of integers in [{lo}, {hi}]")
    return tuple(v)


def _checked(body: dict, expect: dict) -> dict:
    """The SessionInfo fields of a header body whose every field was checked (ValueError if not)."""
    fields = {k: _int(body, k, 1) for k in ("chunk", "n_layers", "n_kv_heads", "head_dim", "batch")}
    fields["n_tokens"] = n = _int(body, "n_tokens")
    for key, want in expect.items():
        if key in fields and fields[key] != want:
            raise ValueError(f"{key} is {fields[key]}, the model has {want}")
    vocab = expect.get("vocab_size", _BIG)
    tokens, lens = _ints(body, "tokens", 0, vocab - 1), _ints(body, "layer_lens")
    windows = _ints(body, "windows") if "windows" in body else ()
    if windows and len(windows) != fields["n_layers"]:
        raise ValueError(f"windows must list every layer ({len(windows)} for {fields['n_layers']})")
    # a sliding layer saves its ring: at least the window - 1 tokens its next query reads
    low = [min(n, w - 1) if w else n for w in windows] or [n] * fields["n_layers"]
    if any(not lo <= x <= n for lo, x in zip(low, lens)) or len(lens) != len(low) or len(tokens) != n:
        raise ValueError(f"{n} tokens, but {len(tokens)} token ids and layer lengths {sorted(set(lens))}")
    if not isinstance(body.get("fingerprint"), str) or body.get("kv_dtype") not in DTYPES:
        raise ValueError("fingerprint or kv_dtype missing")
    if not isinstance(body.get("meta"), dict):
        raise ValueError("meta must be an object")
    layers = body.get("layers")
    if not isinstance(layers, list) or len(layers) != fields["n_layers"]:
        raise ValueError("layers must list every layer")
    for i, entry in enumerate(layers):
        _check_layer(entry, i, lens[i], fields["chunk"])
    sparse = body.get("sparse")
    if sparse is not None:  # the selector covers the global layers
        _check_sparse(sparse, global_layers(windows, fields["n_layers"]))
    return dict(fields, fingerprint=body["fingerprint"], kv_dtype=body["kv_dtype"], layer_lens=lens,
                tokens=tokens, meta=body["meta"], layers=tuple(layers), sparse=sparse, windows=windows)  # fmt: skip


def _check_sparse(entry, n_layers: int) -> None:
    """A sparse state entry (session_sparse.py): its file, size, crc, config and per-layer stats."""
    if not isinstance(entry, dict) or entry.get("file") != "sparse.safetensors":
        raise ValueError("sparse must name sparse.safetensors")
    _int(entry, "size", 1)
    _int(entry, "crc32", 0, 0xFFFFFFFF)
    stats = entry.get("stats")
    if not isinstance(entry.get("config"), dict) or not isinstance(stats, dict):
        raise ValueError("sparse must hold its config and stats")
    for key in ("ceilings", "attn_cos"):
        v = stats.get(key)
        if not isinstance(v, list) or len(v) != n_layers or not all(
                x is None or (type(x) is float and math.isfinite(x)) for x in v):  # fmt: skip
            raise ValueError(f"sparse stats {key} must list a number or null per layer")


def _check_layer(entry, i: int, n: int, chunk: int) -> None:
    if not isinstance(entry, dict) or entry.get("file") != f"layer_{i:03d}.kv":
        raise ValueError(f"layer {i}: its entry must name layer_{i:03d}.kv")
    size = _int(entry, "size")
    records = entry.get("records")
    if not isinstance(records, list) or len(records) != -(-n // chunk):
        raise ValueError(f"layer {i}: {n} tokens need {-(-n // chunk)} records of {chunk}")
    for r in records:
        ok = isinstance(r, list) and len(r) == 4 and all(type(x) is int and x >= 0 for x in r[:3])
        if not ok or r[2] > 0xFFFFFFFF or type(r[3]) is not bool or r[0] + r[1] > size:
            raise ValueError(f"layer {i}: a record is not [offset, size, crc32, compressed] in the file")
