"""bench/gpu_check.sh --cpu-smoke: the script a GPU session runs, end to end on CPU at toy sizes — the
kernel tests through the device switch, and bench/long_context.py --tiny (exact at 1k, sparse with
misses from host memory at 2k, HF's cache, prefill), so neither rots between GPU sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # the script sets what each step needs
    r = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke"], env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    out = tmp_path / "out"
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "kernels.txt", "long_context.jsonl",
                                                     "long_context.md", "summary.md"]  # fmt: skip
    assert "kernel tests: exit 0" in (out / "env.txt").read_text()
    assert " passed" in (out / "kernels.txt").read_text()
    rows = [json.loads(line) for line in (out / "long_context.jsonl").read_text().splitlines()]
    by = {(r["row"], r["ctx"]) for r in rows}
    assert by == {("exact", 1000), ("sparse 1/16", 2000), ("sparse 1/16, lookahead off", 2000), ("HF DynamicCache", 1000),
                  ("prefill", 1000)}  # fmt: skip
    sparse = next(r for r in rows if r["row"] == "sparse 1/16")
    assert sparse["misses_per_step"] > 0 and 0 < sparse["hit_rate"] < 1  # the hot set holds 3/4 of the KV
    assert sparse["hot_set"] == "rows" and sparse["miss_mb_per_step"] > 0  # as single rows: a token cache
    assert sparse["floor_ms"] > 0 and sparse["decode_over_floor"] > 0 and "--budget auto" in sparse["why"]
    assert sparse["rounds_per_step"] >= 0 and sparse["stall_ms"] >= 0
    off = next(r for r in rows if r["row"] == "sparse 1/16, lookahead off")  # on a CPU the default is off too
    assert off["ahead_per_step"] == sparse["ahead_per_step"] == 0 and off["misses_per_step"] > 0
    exact = [r for r in rows if r["row"] == "exact"]
    assert len(exact) == 2 and all(r["hit_rate"] == 1.0 and r["misses_per_step"] == 0 for r in exact)
    assert all(r["tok_s"] > 0 for r in rows)
    summary = (out / "summary.md").read_text()
    assert "| sparse 1/16 | 2000 |" in summary and "## kernels" in summary


def test_gpu_check_usage():
    r = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "cpu-smoke" in r.stdout
