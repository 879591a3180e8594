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


def add_sparse_args(ap, policies: str, budgets: str, json_rows: str) -> None:
    """The options every sparse-decode bench takes (policies, budgets, prompt seed, threads, JSON)."""
    ap.add_argument("--policies", default=policies, help="comma list; POLICY+LAYERS sets layer_budget (uniform, squeeze; default adaptive)")
    ap.add_argument("--budgets", default=budgets, help="fractions of the context (or token counts)")
    ap.add_argument("--seed", type=int, default=0, help="start of the natural-text prompt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help=f"append one JSON row per {json_rows} to this file")


def parse_with_threads(ap):
    """ap.parse_args(), then torch's thread count from --threads (left alone when unset)."""
    import torch

    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    return a
