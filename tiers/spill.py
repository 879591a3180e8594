"""Private spill directories: created 0700, removed on close, at exit, and after a crash.

Layout under the root (the configured `disk_dir`, else `$XDG_CACHE_HOME/offload/spill`):

    <root>/offload-spill-<pid>-<start>/        one per process (pid + process start time, ms)
        store-XXXXXXXX/                        one per store, removed when the store closes
            layer_000.kv ...                   0600

A `weakref.finalize` removes a store's directory when the store is closed, garbage-collected or the
interpreter exits (finalizers run at exit; offload-chat turns SIGTERM/SIGHUP into a normal exit so
they run then too). A killed process leaves its directory behind: every new
`SpillDir`, and `load_model`, first remove process directories whose (pid, start time) is no longer
alive (`offload/stale.py`). A full disk is a `DiskFullError` (`spill_error`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path

from offload.errors import DiskFullError
from offload.paths import make_private
from offload.stale import owner_tag, reap_dead

__all__ = ["SpillDir", "default_spill_root", "reap_stale", "spill_error"]

_PREFIX = "offload-spill-"
_NAME = re.compile(r"^offload-spill-(?P<pid>\d+)-(?P<start>\d+)$")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def default_spill_root() -> Path:
    """`$XDG_CACHE_HOME/offload/spill`, or `~/.cache/offload/spill`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "offload" / "spill"


def _private_dir(path: Path) -> None:
    """mkdir -p with 0700 on the directory itself (parents we create get 0700 too)."""
    make_private(path)
    os.chmod(path, 0o700)


def reap_stale(root: str | os.PathLike) -> list[Path]:
    """Remove process spill directories under `root` left by processes that are gone. Returns them."""
    return reap_dead(root, _NAME)


def spill_error(e: OSError, where: str | os.PathLike) -> OSError | DiskFullError:
    """What a failed spill write should raise: a full disk becomes `DiskFullError` with advice (the
    CLI's exit 7); any other OSError is returned unchanged."""
    if e.errno not in _FULL:
        return e
    return DiskFullError(
        f"the disk holding the KV spill ({where}) is full ({e.strerror}): free space there, "
        "point --disk-dir (OffloadConfig(disk_dir=...)) at a larger disk, or give the KV more host "
        "memory (--host-mem) so less of it spills"
    )


class SpillDir:
    """One store's private spill directory (0700), removed by `close()`, GC or interpreter exit."""

    def __init__(self, root: str | os.PathLike | None = None):
        root = Path(root) if root is not None else default_spill_root()
        if not root.exists():  # ours: created private; a user's existing disk_dir is left as is
            _private_dir(root)
        reap_stale(root)
        proc = root / f"{_PREFIX}{owner_tag()}"
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
