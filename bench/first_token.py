"""Time from `offload-chat -f doc -p question` start to the first answer byte on stdout: cold (no
session), then warm (`--session` saved by a previous run). Each run is a fresh process, as a user
would see it (interpreter start, imports and model load included).

    python bench/first_token.py --doc examples/lighthouse.md --json bench/results/first-token-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _first_byte(cmd: list[str]) -> tuple[float, float]:
    """(seconds to the first stdout byte, seconds to exit)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    p.stdout.read(1)
    first = time.perf_counter() - t0
    p.stdout.read()
    if p.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}")
    return first, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default="examples/lighthouse.md")
    ap.add_argument("--question", default="How old is the lighthouse?")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    exe = str(Path(sys.executable).parent / "offload-chat")
    exe = exe if os.path.exists(exe) else shutil.which("offload-chat")
    base = [exe, "-f", a.doc, "-p", a.question, "-n", "8"]
    with tempfile.TemporaryDirectory() as tmp:
        session = os.path.join(tmp, "doc.session")
        cold, _ = _first_byte(base)
        create, _ = _first_byte(base + ["--session", session])  # cold too, then saves
        warm, _ = _first_byte(base + ["--session", session])
    row = {"bench": "first_token", "doc": a.doc, "cold_s": round(cold, 2), "cold_with_save_s": round(create, 2),
           "warm_session_s": round(warm, 2), "speedup": round(cold / warm, 1), "date": time.strftime("%Y-%m-%d")}
    print(f"{'cold s':>7} | {'cold+save s':>11} | {'warm --session s':>16} | speedup")
    print(f"{cold:>7.1f} | {create:>11.1f} | {warm:>16.1f} | {row['speedup']:.1f}x")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
