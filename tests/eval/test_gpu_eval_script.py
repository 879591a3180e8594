"""bench/gpu_eval.sh (the extraction eval prepared for a lent GPU) end to end on CPU at toy size, and
bench/eval_merge.py, which joins its per-process parts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eval_merge():
    return load_bench("eval_merge")


def test_cpu_smoke_runs_every_step(tmp_path, model):
    """Split GGUF reassembled and checked, each policy probed, one process per (length, task), the
    parts merged into one JSON and a kept-answers table (model: converted once by the fixture)."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run([str(ROOT / "bench" / "gpu_eval.sh"), "--cpu-smoke"], env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["env.txt", "eval-cpu.json", "parts.tar.gz", "table-cpu.txt"]
    env_txt = (tmp_path / "env.txt").read_text()
    assert "on cpu: token,quest/none; on the CPUs: none" in env_txt and "Traceback" not in env_txt
    doc = json.loads((tmp_path / "eval-cpu.json").read_text())
    cols = {(r["task"], r["mode"], r["policy"]) for r in doc["records"]}
    assert len(doc["records"]) == len(cols) == 2 * (1 + 2 * 2)  # 2 tasks x (dense + 2 policies x 2 budgets)
    assert {t for t, _, _ in cols} == {"log_1key", "prose_fact"}
    assert len(doc["meta"]["parts"]) == 2 and doc["meta"]["finished"]
    assert (doc["meta"]["device"], doc["meta"]["dtype"]) == ("cpu", "float32")
    assert "kept answers vs dense" in (tmp_path / "table-cpu.txt").read_text()


def test_usage_without_a_step():
    r = subprocess.run([str(ROOT / "bench" / "gpu_eval.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "stash" in r.stdout


def _doc(task, seed=0, indexes=(0,), finished="2026-12-05T20:00:00"):
    recs = [{"task": task, "length": 4096, "mode": m, "policy": p, "index": i, "seed": f"{seed}:{i}",
             "depth": None, "n_prompt_tokens": 4000, "score": 1.0, "prediction": "x", "references": ["x"],
             "tokens": [1], "seconds": 1.0}
            for i in indexes for m, p in (("dense", None), ("sparse@1/16", "token"))]  # fmt: skip
    meta = {"seed": seed, "samples": 30, "dtype": "float32", "device": "cuda:0", "policy": ["token"],
            "tasks": [task], "lengths": [4096], "command": f"offload-eval --tasks {task}",
            "started": "2026-12-05T19:00:00", "finished": finished, "seconds": 10.0}  # fmt: skip
    return {"meta": meta, "cells": [], "records": recs}


def test_merge_joins_parts_and_refuses_mixed_settings(eval_merge, tmp_path):
    merged = eval_merge.merge([_doc("csv_1key", indexes=(1, 0)), _doc("log_1key")])
    assert [(r["task"], r["index"]) for r in merged["records"]][::2] == [("csv_1key", 0), ("csv_1key", 1),
                                                                         ("log_1key", 0)]  # fmt: skip
    assert merged["meta"]["tasks"] == ["csv_1key", "log_1key"] and merged["meta"]["finished"]
    assert eval_merge.merge([_doc("a"), _doc("b", finished=None)])["meta"]["finished"] is None  # one was cut
    with pytest.raises(ValueError, match="seed"):
        eval_merge.merge([_doc("a"), _doc("b", seed=1)])
    with pytest.raises(ValueError, match="in two parts"):
        eval_merge.merge([_doc("a"), _doc("a")])
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc("csv_1key")))
    b.write_text(json.dumps(_doc("log_1key")))
    out = tmp_path / "all.json"
    assert eval_merge.main([str(out), str(a), str(b)]) == 0
    assert len(json.loads(out.read_text())["records"]) == 4 and json.loads(out.read_text())["cells"]
    b.write_text(json.dumps(_doc("log_1key", seed=2)))
    assert eval_merge.main([str(out), str(a), str(b)]) == 2
