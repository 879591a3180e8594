"""Private spill directories: created 0700, removed on close, at exit, and after a crash.

Layout under the root (the configured `disk_dir`, else `$XDG_CACHE_HOME/offload/spill`):

    <root>/offload-spill-<pid>-<start>/        one per process (pid + process start time, ms)
        store-XXXXXXXX/                        one per store, removed when the store closes
            layer_000.kv ...                   0600

A `weakref.finalize` removes a store's directory when the store is closed, garbage-collected or the
interpreter exits (finalizers run at exit). A killed process leaves its directory behind: every new
`SpillDir` first removes process directories whose (pid, start time) is no longer alive. The start
time guards against pid reuse; a directory of a live process is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path

import psutil

__all__ = ["SpillDir", "default_spill_root", "reap_stale"]

_PREFIX = "offload-spill-"
_NAME = re.compile(r"^offload-spill-(\d+)-(\d+)$")


def default_spill_root() -> Path:
    """`$XDG_CACHE_HOME/offload/spill`, or `~/.cache/offload/spill`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "offload" / "spill"


def _start_ms(pid: int) -> int | None:
    """Process start time in ms since the epoch, or None when there is no such process."""
    try:
        return int(psutil.Process(pid).create_time() * 1000)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _private_dir(path: Path) -> None:
    """mkdir -p with 0700 on the directory itself (parents we create get 0700 too)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def reap_stale(root: str | os.PathLike) -> list[Path]:
    """Remove process spill directories under `root` left by processes that are gone. Returns them."""
    root = Path(root)
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        pid, start = int(match.group(1)), int(match.group(2))
        alive = _start_ms(pid)
        if alive is not None and abs(alive - start) <= 1000:  # same process (create_time jitter)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


class SpillDir:
    """One store's private spill directory (0700), removed by `close()`, GC or interpreter exit."""

    def __init__(self, root: str | os.PathLike | None = None):
        root = Path(root) if root is not None else default_spill_root()
        if not root.exists():  # ours: created private; a user's existing disk_dir is left as is
            _private_dir(root)
        reap_stale(root)
        pid = os.getpid()
        proc = root / f"{_PREFIX}{pid}-{_start_ms(pid) or 0}"
        for attempt in range(3):  # a finalizer may remove an empty `proc` between the two calls
            _private_dir(proc)
            try:
                self.path = Path(tempfile.mkdtemp(prefix="store-", dir=proc))  # mkdtemp: 0700
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        self._finalizer = weakref.finalize(self, _remove, self.path)

    def file(self, name: str) -> int:
        """Create `name` inside the directory, 0600, opened for appending; returns the fd."""
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        return fd

    def close(self) -> None:
        """Remove the directory and everything in it (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    try:  # the per-process directory too, once its last store is gone
        path.parent.rmdir()
    except OSError:
        pass
