"""bench/step_profile.py, bench/prefill_memory.py and the competing load of the speed benches, run for
real on the embedded model at short lengths (their numbers belong to bench/results, not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench_scripts import ROOT, load_bench


def _run(script: str, *args: str, json_path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json", str(json_path)],
                       capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in json_path.read_text().splitlines()]


def test_step_profile_charges_each_phase_to_the_variant_that_runs_it(tmp_path):
    rows = _run("step_profile.py", "--lengths", "600", "--new", "3", "--warmup", "1",
                "--policies", "token,token/none", "--budgets", "1/16", json_path=tmp_path / "p.jsonl")
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"dense", "token@1/16", "token/none@1/16"}
    for r in rows:
        phases = {k: v for k, v in r.items() if k.endswith("_ms") and k != "step_ms"}
        assert r["weights_ms"] > 0 and all(v >= 0 for k, v in phases.items() if k != "weights_ms")
        assert abs(sum(phases.values()) - r["step_ms"]) < 0.05  # the phases add up to the step
    dense = by["dense"]
    assert dense["attend_ms"] > 0 and dense["score_ms"] == dense["topk_ms"] == dense["rest_ms"] == 0
    assert by["token@1/16"]["rest_ms"] > 0 and by["token@1/16"]["merge_ms"] > 0
    for name in ("token@1/16", "token/none@1/16"):
        assert by[name]["score_ms"] > 0 and by[name]["topk_ms"] > 0 and by[name]["gather_ms"] > 0
    assert by["token/none@1/16"]["rest_ms"] == 0


def test_phase_clock_puts_the_originals_back():
    mod = load_bench("step_profile")
    from offload.sparse.rest import RestCopies
    from offload.sparse.selector import Selector

    select, attend = Selector.select, RestCopies.attend
    clock = mod.PhaseClock(cuda=False)
    mod.instrument(clock)
    assert Selector.select is not select and RestCopies.attend is not attend
    clock.undo()
    assert Selector.select is select and RestCopies.attend is attend


def test_prefill_memory_reports_time_and_peak_rss_per_variant(tmp_path):
    rows = _run("prefill_memory.py", "--lengths", "500", "--variants", "hf,exact,token@1/16",
                json_path=tmp_path / "m.jsonl")
    assert [r["variant"] for r in rows] == ["hf", "exact", "token@1/16"]
    for r in rows:
        assert r["seconds"] > 0 and r["rss_peak_mib"] >= r["rss_loaded_mib"] > 100  # a model is loaded
    assert rows[0]["ratio_to_hf"] == 1.0


def test_competing_load_spins_and_is_gone_after():
    mod = load_bench("_common")
    with mod.CompetingLoad(1) as load:
        (p,) = load._procs
        assert p.poll() is None  # spinning
        assert os.sched_getaffinity(p.pid) == {sorted(os.sched_getaffinity(0))[-1]}
    assert p.poll() is not None
    with pytest.raises(SystemExit, match="--load"):
        mod.CompetingLoad(os.cpu_count() + 1)
