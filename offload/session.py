"""Sessions: a processed document's KV cache and tokens saved to disk and reopened without prefill.

A session is a directory (0700) of 0600 files:

    header.json        {"body": {...}, "crc32": crc of the canonical body}: format and version,
                       model fingerprint, KV geometry and dtype, chunk size, token ids, per-layer
                       record index (offset, size, crc, compressed), user meta, sparse state entry
    layer_000.kv ...   per layer: records of C tokens ([2, B*Hkv, c, D] each, the last one partial),
                       encoded like the disk tier (byte-shuffle + zstd for bf16), each with a CRC
    sparse.safetensors a sparse store's selection state (`session_sparse.py`), so a reopened store
                       decodes token for token as the original

Saving writes a sibling `NAME.tmp-XXXX` directory, fsyncs it, then swaps it in with one atomic
rename (renameat2 RENAME_EXCHANGE when an old session is there), so a crash or a full disk leaves
either the old session or the new one, never half of one. Loading validates everything first and
raises `SessionError` — and only `SessionError` — for another model's session, a format version it
does not read, a damaged or truncated file, a missing file, or a path that is not a session.

Works with any `KVStore` (through `read_layer` / `append`): DenseKVStore and TieredKVStore alike.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .atomic_dir import fsync_dir, swap_in, write_new_file
from .errors import DiskFullError, SessionError
from .fingerprint import model_fingerprint
from .paths import make_private
from .session_sparse import restore_sparse, save_sparse
from .session_header import (DTYPES, FORMAT, HEADER, VERSION, SessionInfo, looks_like_session, read_regular,
                             read_session_info)  # fmt: skip
from .stale import owner_tag, reap_dead

__all__ = ["save_session", "load_session", "read_session_info", "model_fingerprint", "SessionInfo",
           "reap_temp_dirs"]  # fmt: skip

# what a damaged or crafted file can raise while decoding (RuntimeError: torch on absurd shapes)
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError,
                MemoryError)  # fmt: skip
_DTYPES = {name: getattr(torch, name) for name in DTYPES}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _temp_pattern(path: Path) -> re.Pattern:
    """Names of the temp (and swap-fallback `.old-`) directories a save of `path` makes."""
    return re.compile(rf"^{re.escape(path.name)}\.(?:tmp|old)-(?P<pid>\d+)-(?P<start>\d+)-")


def reap_temp_dirs(path) -> list[Path]:
    """Remove the temp directories that saves of `path` by processes now gone left behind (kill -9
    mid-save). Called by every save and load of `path`; returns what was removed."""
    path = Path(path)
    return reap_dead(path.parent if str(path.parent) else Path("."), _temp_pattern(path))


# -- saving ---------------------------------------------------------------------------------------
def save_session(path, store, tokens, fingerprint: str, meta: dict | None = None,
                 chunk: int | None = None, compress: bool | None = None) -> None:  # fmt: skip
    """Write `store`'s KV and `tokens` to the session directory `path`, atomically.

    fingerprint: `model_fingerprint(...)` of the model that produced the KV; meta: JSON-serializable
    extras (e.g. chat messages); chunk: tokens per record (default: the store's chunk, else 64);
    compress: zstd records (default: on for bf16). An existing session at `path` is replaced only
    once the new one is complete; a path that is not a session is never overwritten."""
    from offload.tiers.codec import ChunkCodec, default_compress

    path = Path(path)
    if (path.exists() or path.is_symlink()) and not looks_like_session(path):
        raise SessionError(f"refusing to overwrite {path}: it exists and is not an offload session")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        make_private(parent)  # parents we create are 0700, whatever the umask
        reap_temp_dirs(path)
        tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-{owner_tag()}-", dir=parent))  # 0700
    except OSError as e:
        raise _save_error(path, e) from None
    try:
        chunk = chunk or getattr(getattr(store, "layout", None), "chunk", None) or 64
        k0, _ = store.read_layer(0)
        batch, n_kv_heads, _, head_dim = k0.shape
        dtype = k0.dtype
        codec = ChunkCodec(itemsize=k0.element_size(), compress=default_compress(dtype, compress))
        layers, lens = [], []
        for layer in range(store.n_layers):
            k, v = store.read_layer(layer)
            layers.append(_write_layer(tmp / f"layer_{layer:03d}.kv", k, v, chunk, codec))
            lens.append(k.shape[2])
        body = {
            "format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
            "kv_dtype": str(dtype).removeprefix("torch."), "chunk": chunk,
            "n_tokens": max((store.layer_len(i) for i in range(store.n_layers)), default=0),
            "n_layers": store.n_layers, "n_kv_heads": n_kv_heads, "windows": list(getattr(store, "windows", ())),
            "head_dim": head_dim, "batch": batch, "layer_lens": lens,
            "tokens": [int(t) for t in tokens], "meta": meta or {}, "sparse": save_sparse(store, tmp),
            "layers": layers,
        }  # fmt: skip
        text = json.dumps(body, sort_keys=True)
        header = json.dumps({"body": body, "crc32": zlib.crc32(text.encode())}, sort_keys=True)
        write_new_file(tmp / HEADER, header.encode())
        fsync_dir(tmp)
        swap_in(tmp, path)
        fsync_dir(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, TypeError, ValueError)):
            raise _save_error(path, e) from None
        raise


def _save_error(path: Path, e: Exception) -> Exception:
    """A full disk is a DiskFullError (exit 7); any other failure to save a SessionError."""
    if isinstance(e, OSError) and e.errno in _FULL:
        return DiskFullError(f"could not save session to {path}: the disk is full ({e.strerror}); the "
                             "previous session there, if any, is intact. Free space or save elsewhere")  # fmt: skip
    return SessionError(f"could not save session to {path}: {e}")


def _write_layer(file: Path, k: torch.Tensor, v: torch.Tensor, chunk: int, codec) -> dict:
    b, h, n, d = k.shape
    k2, v2 = k.reshape(b * h, n, d).to("cpu"), v.reshape(b * h, n, d).to("cpu")  # [R, n, D]
    records, offset = [], 0
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for a in range(0, n, chunk):
            # one record [2, R, c, D]: built per record (small, reused allocations), not per layer
            payload, compressed, crc = codec.encode(torch.stack([k2[:, a : a + chunk], v2[:, a : a + chunk]]))
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            records.append([offset, len(payload), crc, compressed])
            offset += len(payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"file": file.name, "size": offset, "records": records}


# -- loading --------------------------------------------------------------------------------------
def load_session(path, fingerprint: str, config=None, device=None, dtype=None, expect: dict | None = None,
                 planned_hot_set: int | None = None):  # fmt: skip
    """Reopen the session at `path` into a new KV store; returns (store, tokens).

    fingerprint: the current model's `model_fingerprint(...)`; it must equal the saved one.
    config: OffloadConfig (the store is what its `StoreSpec` says); device: where the store computes
    (default: config's device); dtype: if given, must equal the saved KV dtype; expect: the model's
    geometry, checked against the header (see `read_session_info`); planned_hot_set: the model's
    (`OffloadModel.planned_hot_set`). Raises SessionError for any bad input; nothing else escapes
    for a bad file."""
    from offload.config import OffloadConfig
    from offload.store_spec import StoreSpec
    from offload.tiers.codec import CorruptChunkError

    reap_temp_dirs(path)
    info = read_session_info(path, expect, fingerprint)
    kv_dtype = _DTYPES[info.kv_dtype]
    if dtype is not None and dtype != kv_dtype:
        raise SessionError(f"{path} holds {info.kv_dtype} KV, this model computes in {dtype}")
    config = config if config is not None else OffloadConfig()
    device = torch.device(device) if device is not None else config.torch_device()
    geometry = (info.n_layers, info.n_kv_heads, info.head_dim, kv_dtype, device)
    store, layer = None, 0
    try:
        # summaries are rebuilt by append as layers load (on the saved basis, restored first)
        store = StoreSpec.derive(config, *geometry, batch=info.batch, planned_hot_set=planned_hot_set,
                                 windows=info.windows).new_store()  # fmt: skip
        restore_sparse(store, Path(path), info.sparse)
        # Read + verify the next layer in a worker while this one is appended: two layers in flight.
        with ThreadPoolExecutor(max_workers=2) as pool:
            todo = iter(enumerate(info.layers))
            pending: deque = deque()

            def submit():
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt[0], pool.submit(_read_layer, Path(path), nxt[1], info, nxt[0], kv_dtype)))

            submit()
            submit()
            while pending:
                layer, future = pending.popleft()
                k, v = future.result()
                submit()
                if info.layer_lens[layer] < info.n_tokens:  # a sliding layer's window: what came before
                    store.advance(layer, info.n_tokens - info.layer_lens[layer])
                store.append(layer, k.to(device), v.to(device))
    except CorruptChunkError as e:
        store.close()
        raise SessionError(f"{path}: layer {layer} is damaged ({e}); the session cannot be used") from None
    except _READ_ERRORS as e:
        if store is not None:
            store.close()
        raise SessionError(f"{path}: cannot read layer {layer} ({type(e).__name__}: {e})") from None
    except SessionError:
        store.close()
        raise
    restore_sparse(store, Path(path), info.sparse)  # again: appending the layers reset chunk scores
    return store, list(info.tokens)


def _read_layer(path: Path, entry: dict, info: SessionInfo, layer: int, dtype):
    """`layer`'s KV as k, v [B, Hkv, n, D] CPU tensors, every record checked against its CRC.

    Uncompressed full records stored back to back (fp32/fp16 sessions) are viewed in place and
    moved with one strided copy; compressed or partial records are decoded one by one. Runs in a
    worker thread (zlib and zstd release the GIL), so it owns its codec."""
    from offload.tiers.codec import ChunkCodec

    codec = ChunkCodec(itemsize=dtype.itemsize, compress=False)  # decodes both record kinds
    file = path / str(entry["file"])  # the header check made it layer_NNN.kv
    size = int(entry["size"])
    data = read_regular(file, size)  # a regular file, read only once its size is the listed one
    if len(data) != size:
        raise ValueError(f"{file.name} does not hold the {size} bytes its header lists (truncated?)")
    n, r, c, d = info.layer_lens[layer], info.batch * info.n_kv_heads, info.chunk, info.head_dim
    records = entry["records"]
    if len(records) != -(-n // c):
        raise ValueError(f"{file.name} lists {len(records)} records for {n} tokens")
    out = torch.empty(2, r, n, d, dtype=dtype)  # [k|v, R, n, D]
    view, full = memoryview(data), 2 * r * c * d * dtype.itemsize
    bulk = 0  # leading records that are raw, full and back to back
    for j, (offset, nbytes, crc, compressed) in enumerate(records):
        if offset < 0 or offset + nbytes > size:
            raise ValueError(f"record {j} of {file.name} lies outside the file")
        if compressed or nbytes != full or offset != j * full or (j + 1) * c > n or bulk != j:
            break
        codec.verify(view[offset : offset + nbytes], int(crc))
        bulk = j + 1
    if bulk:
        raw = torch.frombuffer(data, dtype=dtype, count=bulk * full // dtype.itemsize)
        out[:, :, : bulk * c] = raw.view(bulk, 2, r, c, d).permute(1, 2, 0, 3, 4).reshape(2, r, bulk * c, d)
    for j in range(bulk, len(records)):
        offset, nbytes, crc, compressed = records[j]
        if offset < 0 or offset + nbytes > size:
            raise ValueError(f"record {j} of {file.name} lies outside the file")
        t = min(c, n - j * c)
        tmp = torch.empty(2, r, t, d, dtype=dtype)
        codec.decode_into(view[offset : offset + nbytes], bool(compressed), int(crc), tmp)
        out[:, :, j * c : j * c + t] = tmp
    shape = (info.batch, info.n_kv_heads, n, d)
    return out[0].reshape(shape), out[1].reshape(shape)
