"""Helpers of the fault suite: a small real tmpfs, a model that spills, offload-chat as a real
subprocess, what a run left on disk."""

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.config import OffloadConfig
from offload.model import OffloadModel


def mount_tmpfs(path: Path, size: str):
    """Mount a tmpfs of `size` at `path`; skip (with why) where mounting is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("disk-full tests mount a small tmpfs: needs root and mount(8) (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): disk-full tests need one")


def spilling(model, disk_dir) -> OffloadModel:
    """`model`'s weights with a config that keeps ~1 MiB of KV in memory and spills the rest."""
    cfg = OffloadConfig(kv_store="tiered", hot_set_bytes=1 << 20, host_mem=1 << 20, disk_dir=str(disk_dir))
    return OffloadModel(hf=model.hf, tokenizer=model.tokenizer, config=cfg, model_dir=model.model_dir)


def offload_chat() -> str:
    exe = Path(sys.executable).parent / "offload-chat"
    return str(exe) if exe.exists() else shutil.which("offload-chat")


def leftovers(root: Path) -> list[str]:
    """Everything under `root` (files and dirs), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


LONG_DOC = "The keeper climbed the stairs and lit the lamp before the storm came in. " * 120


@contextlib.contextmanager
def as_nobody():
    """Run the block with the effective uid of `nobody` when root (root ignores file modes), so a
    chmod 000 directory really is unreadable."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def wait_for(predicate, what: str, proc=None, limit: float = 300.0):
    """Poll until `predicate()` holds (a child reached the point to kill it at); fail the test if
    it never does or `proc` exits first. Not a timing assertion: the limit only stops a hang."""
    deadline = time.monotonic() + limit
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"never saw {what}")
        time.sleep(0.02)
