"""Temp and spill directories named after the process that owns them, and reaping the ones whose
process is gone.

A crash (kill -9, power loss) skips every cleanup, so a directory must say who made it: its name
carries the owner's pid and start time (ms since the epoch). The start time guards against pid reuse;
a directory of a live process is never touched."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import psutil

__all__ = ["owner_tag", "owner_alive", "reap_dead"]


def _start_ms(pid: int) -> int | None:
    """Process start time in ms since the epoch, or None when there is no such process."""
    try:
        return int(psutil.Process(pid).create_time() * 1000)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def owner_tag() -> str:
    """`<pid>-<start ms>` of this process: goes into the names of the directories it creates."""
    pid = os.getpid()
    return f"{pid}-{_start_ms(pid) or 0}"


def owner_alive(pid: int, start_ms: int) -> bool:
    """Whether the process that wrote `<pid>-<start_ms>` still runs (create_time jitters ~ms)."""
    alive = _start_ms(pid)
    return alive is not None and abs(alive - start_ms) <= 1000


def reap_dead(root: str | os.PathLike, pattern: re.Pattern) -> list[Path]:
    """Remove directories in `root` whose name matches `pattern` (groups `pid`, `start`) and whose
    owner is gone. Symlinks and files are never followed or removed. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        if owner_alive(int(match.group("pid")), int(match.group("start"))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
