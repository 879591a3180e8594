"""Atomic directory writes: new 0600 files written and fsynced, a finished temp dir swapped in.

`swap_in(tmp, path)` makes `tmp` be `path` in one step (renameat2 RENAME_EXCHANGE when `path`
exists), so a crash or a full disk leaves either the old directory or the new one, never half.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

from .stale import owner_tag

__all__ = ["write_new_file", "fsync_dir", "swap_in"]


def write_new_file(file: Path, data: bytes) -> None:
    """Create `file` (0600; it must not exist) holding `data`, fsynced."""
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory: the names created in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(tmp: Path, path: Path) -> None:
    """Make `tmp` be `path` in one atomic step; whatever was at `path` is removed afterwards."""
    if not path.exists():
        os.replace(tmp, path)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    at_fdcwd, rename_exchange = -100, 2
    if renameat2 is not None and renameat2(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(path),
                                           rename_exchange) == 0:  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        return
    # no exchange here; named like the save's temp dir, so a crash right here is reaped the same way
    old = Path(tempfile.mkdtemp(prefix=f"{path.name}.old-{owner_tag()}-", dir=path.parent))
    os.replace(path, old / "previous")
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
