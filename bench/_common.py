"""Helpers the bench scripts share (imported as `_common`: scripts run as `python bench/x.py`)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """CPU model and core count (platform.processor() is empty on Linux)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cpus"
