"""Processed prefixes on disk: sessions under `--cache-dir`, so a restart does not prefill them again.

Layout (the root and every directory 0700, every file 0600, written by `offload.session`, which
builds a session in a temp directory and renames it in):

    <cache-dir>/<model fingerprint, 16 hex>/<sha256 of the token ids, 24 hex>.session/

The fingerprint directory keeps models apart; the session's own header holds the full fingerprint,
which `load_session` checks again. The token ids of every session are indexed in memory at start
(from the headers: no KV is read) so a request finds its longest cached prefix without touching the
disk. Least recently used sessions go first when the whole root holds more than `max_bytes`; a
session whose tokens are a prefix of a newer one is removed (the newer covers it)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from array import array
from pathlib import Path

from offload.errors import SessionError
from offload.paths import private_dir
from offload.session import load_session, read_session_info, save_session
from offload.store_spec import StoreSpec

from .slots import common_prefix

__all__ = ["DiskCache"]

_SESSION = re.compile(r"^[0-9a-f]{24}\.session$")
_LEFTOVER = re.compile(r"^[0-9a-f]{24}\.session\.(tmp|old)-")  # a save a crash interrupted


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


class DiskCache:
    """Sessions of one model under `root`. Methods are called from the one worker thread."""

    def __init__(self, root, fingerprint: str, max_bytes: int, config, device, dtype, log=None,
                 planned_hot_set: int | None = None):  # fmt: skip
        self.root = private_dir(root)
        self.dir = private_dir(self.root / fingerprint[:16])
        self.fingerprint, self.max_bytes = fingerprint, max_bytes
        self._config, self._device, self._dtype = config, device, dtype
        self._hot_set = planned_hot_set  # the model's memory plan's (`OffloadModel.planned_hot_set`)
        self._log = log or (lambda msg: None)
        self._index: dict[Path, tuple[int, ...]] = {}
        for entry in sorted(self.dir.iterdir()):
            if _LEFTOVER.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
            elif _SESSION.match(entry.name):
                try:
                    info = read_session_info(entry)
                except SessionError as e:  # damaged: it can only cost a prefill, drop it
                    self._log(f"cache: dropping {entry.name}: {e}")
                    shutil.rmtree(entry, ignore_errors=True)
                    continue
                if info.fingerprint == fingerprint:
                    self._index[entry] = info.tokens

    def __len__(self) -> int:
        return len(self._index)

    def best(self, ids) -> tuple[Path | None, int]:
        """The session sharing the longest prefix with `ids`, and that length."""
        found, n = None, 0
        for path, tokens in self._index.items():
            m = common_prefix(tokens, ids)
            if m > n:
                found, n = path, m
        return found, n

    def load(self, path: Path):
        """(store, tokens) of the session at `path`, or None when it cannot be used (then dropped)."""
        try:
            store, tokens = load_session(path, self.fingerprint, self._config, device=self._device,
                                         dtype=self._dtype, planned_hot_set=self._hot_set)  # fmt: skip
        except SessionError as e:
            self._log(f"cache: dropping {path.name}: {e}")
            self._index.pop(path, None)
            shutil.rmtree(path, ignore_errors=True)
            return None
        os.utime(path)  # most recently used
        return store, tokens

    def save(self, store, tokens: list[int]) -> Path | None:
        """Write `store` (holding exactly `tokens`) as a session, then trim the cache. Returns its path,
        or None when it could not be written (the cache is an optimisation: a full disk is logged)."""
        name = hashlib.sha256(self.fingerprint.encode() + array("q", tokens).tobytes()).hexdigest()[:24]
        path = self.dir / f"{name}.session"
        try:
            save_session(path, store, tokens, self.fingerprint, meta={"offload-serve": "prefix cache"},
                         chunk=StoreSpec.chunk_of(self._config))  # fmt: skip
        except SessionError as e:
            self._log(f"cache: not saved: {e}")
            return None
        self._index[path] = tuple(tokens)
        for other, t in list(self._index.items()):  # covered by the new one
            if other != path and len(t) <= len(tokens) and common_prefix(t, tokens) == len(t):
                self._remove(other)
        self._trim()
        return path if path in self._index else None

    def _remove(self, path: Path) -> None:
        self._index.pop(path, None)
        shutil.rmtree(path, ignore_errors=True)

    def _trim(self) -> None:
        """Remove the least recently used sessions (of any model under root) beyond max_bytes."""
        entries = [(p.stat().st_mtime, p, _size(p)) for d in self.root.iterdir() if d.is_dir()
                   for p in d.iterdir() if _SESSION.match(p.name)]  # fmt: skip
        total = sum(size for _, _, size in entries)
        for _, path, size in sorted(entries):
            if total <= self.max_bytes:
                break
            self._remove(path)
            total -= size
