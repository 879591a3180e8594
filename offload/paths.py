"""User-private locations on disk: a 0700 cache directory and atomic 0600 writes inside it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "private_dir"]


def private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) if needed and make it 0700; returns it as a Path."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
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
