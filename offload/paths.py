"""User-private locations on disk: a 0700 cache directory, and 0700 parents for what we create.

`Path.mkdir(parents=True, mode=...)` gives the parents it creates the umask's mode (0777 under umask
000): every directory offload creates goes through `make_private` instead, which creates each missing
level 0700 and never changes the mode of a directory that was already there (except the leaf of
`private_dir`, which is ours by contract)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "private_dir", "make_private"]


def make_private(path: str | os.PathLike) -> Path:
    """Create `path` and its missing parents, each new one 0700; existing ones are left as they are."""
    p = Path(path)
    missing = []
    for level in (p, *p.parents):
        if level.exists():
            break
        missing.append(level)
    for level in reversed(missing):
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:  # made by someone else meanwhile: not ours to chmod
            continue
        os.chmod(level, 0o700)  # mkdir's mode is masked by the umask; 0700 whatever it is
    return p


def private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents, 0700) if needed and make `path` itself 0700; returns it as a Path."""
    p = make_private(path)
    os.chmod(p, 0o700)
    return p


def cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/offload/<parts>` (default `~/.cache/offload`), created 0700.

    `OFFLOAD_CACHE_DIR` overrides the root (tests and CI point it at a scratch directory)."""
    root = os.environ.get("OFFLOAD_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "offload")
    base = private_dir(root)
    return private_dir(base.joinpath(*parts)) if parts else base
