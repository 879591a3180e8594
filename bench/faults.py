"""The long fault run: the session fuzzer for 20,000+ cases, and kills at random points of a real
chat's prefill (spilling), save and spill, each followed by a fresh run's check.

    python bench/faults.py --cases 20000 --kills 20 --json bench/results/faults-cpu.jsonl

Fuzzer: tests/faults/session_fuzz.py (its docstring states the contract: SessionError or the exact
KV saved). Kills: a child process runs a Chat over a document with ~1 MiB of KV in memory (the rest
spills to a private dir), then saves it over an existing session; the parent kills it (-9, or
SIGTERM: an API process has no handler, so both skip all cleanup) a random time after it enters a
random phase. Then, as the next run would: the session at the target must load whole (the old one
or the new one, never a mix), the killed run's temp and spill directories must be reaped, and
nothing else may be left."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import collections
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, _BENCH)
from _common import machine  # noqa: E402

sys.path.insert(0, str(Path(_BENCH).parent / "tests" / "faults"))  # the fuzzer's core

DOC = "The keeper climbed the stairs and lit the lamp before the storm came in. " * 60
CHILD = """
import sys, offload
disk, target, question = sys.argv[1:4]
cfg = offload.OffloadConfig(kv_store="tiered", hot_set_bytes=1 << 20, host_mem=1 << 20, disk_dir=disk)
model = offload.load_model(config=cfg)
with offload.Chat(model) as chat:
    print("prefill", flush=True)
    chat.send(sys.stdin.read() + question, max_new_tokens=2)
    print("save", flush=True)
    chat.save_session(target)
    print("done", flush=True)
"""


def fuzz(cases: int, seed: int) -> collections.Counter:
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    from session_fuzz import check, damage, make_original

    counts: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, dtype in enumerate((torch.float32, torch.bfloat16)):
            path, kv = make_original(root, dtype)

            @hseed(seed + i)
            @settings(max_examples=cases // 2, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(ops=damage)
            def case(ops):
                try:
                    counts[check(path, kv, root / "work.session", ops)] += 1
                except Exception as e:  # counted and shown, then hypothesis shrinks and reports it
                    counts[f"BUG {type(e).__name__}"] += 1
                    raise

            case()
    return counts


def _child(disk: Path, target: Path, question: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(disk), str(target), question], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    p.stdin.write(DOC)
    p.stdin.close()
    return p


def kills(n: int, rng: random.Random) -> list[dict]:
    import offload
    from offload.session import reap_temp_dirs
    from offload.tiers.spill import reap_stale

    model = offload.load_model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        disk, target = root / "spill", root / "s" / "talk.session"
        first = _child(disk, target, "Who climbed the stairs?")  # the session a crash must not lose
        first.wait()
        for i in range(n):
            phase, how = rng.choice(["prefill", "save"]), rng.choice(["kill -9", "kill -9", "SIGTERM"])
            delay = rng.uniform(0, 1.5 if phase == "prefill" else 0.4)
            p = _child(disk, target, f"Question {i}: what did the keeper light?")
            for line in p.stdout:
                if line.strip() == phase:
                    break
            time.sleep(delay)
            p.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
            p.wait()
            p.stdout.close()
            left_before = sorted(x.name for x in target.parent.iterdir()) + sorted(
                str(x.relative_to(disk)) for x in disk.rglob("*"))  # fmt: skip
            reap_stale(disk)
            reap_temp_dirs(target)
            ok, error = True, ""
            try:
                with offload.Chat(model) as chat:
                    chat.load_session(target)
                    ok = chat.n_tokens > 0
            except offload.OffloadError as e:
                ok, error = False, str(e)
            left = sorted(x.name for x in target.parent.iterdir()) + [str(x) for x in disk.rglob("*")]
            rows.append({"phase": phase, "how": how, "delay_s": round(delay, 2), "rc": p.returncode,
                         "left_by_kill": len(left_before) - 1, "session_loads": ok, "error": error,
                         "left_after_next_run": [x for x in left if x != "talk.session"]})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=27)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    counts = fuzz(a.cases, a.seed) if a.cases else collections.Counter()
    t_fuzz = time.perf_counter() - t0
    rows = kills(a.kills, random.Random(a.seed)) if a.kills else []
    bad = [r for r in rows if not r["session_loads"] or r["left_after_next_run"]]
    summary = {
        "bench": "faults", "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "fuzz_cases": sum(counts.values()), "fuzz_outcomes": dict(counts), "fuzz_seconds": round(t_fuzz, 1),
        "kills": len(rows), "kills_by": dict(collections.Counter(f"{r['how']} in {r['phase']}" for r in rows)),
        "kills_that_left_something": sum(r["left_by_kill"] > 0 for r in rows),
        "kills_bad_after_next_run": len(bad), "kill_rows": rows,
    }  # fmt: skip
    print(f"fuzz: {summary['fuzz_cases']:,} cases in {t_fuzz:.0f} s: {dict(counts)}")
    print(f"kills: {len(rows)} ({summary['kills_by']}); left something: {summary['kills_that_left_something']}; "
          f"session lost or leftovers after the next run: {len(bad)}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(summary) + "\n")
    sys.exit(1 if bad or any(k.startswith("BUG") for k in counts) else 0)


if __name__ == "__main__":
    main()
