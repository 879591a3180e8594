"""bench/kernel_speed.py needs CUDA: without it, it must stop at once with a clear message."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernel_speed.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the bench would run")
def test_bench_exits_clearly_without_cuda():
    r = subprocess.run([sys.executable, str(BENCH), "--selected", "1k"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_bench_help():
    r = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--json" in r.stdout
