"""Soak: many chat turns through the API, with KV spilling to disk. Does memory beyond the KV grow,
do file descriptors leak, is any spill left?

    python bench/soak.py --turns 1000 --json bench/results/soak-cpu.jsonl
    python bench/soak.py --server-requests 500 --json bench/results/soak-cpu.jsonl

Turns go through `offload.Chat` (tiered store: ~1 MiB of KV in memory, the rest spilled to a private
disk dir) in conversations of `--per-chat` turns; each conversation is closed and a new one opened,
so stores, spill files and engines are created and freed hundreds of times. RSS and open fds are
sampled after each conversation closes (no KV held then: what is left is the runtime's own memory).
Growth is measured from the end of the warm-up conversations to the end of the run.
With --server-requests: the same through a real offload-serve (KV spilling the same way) and 4
concurrent clients: chats over rotating documents with follow-ups, some streamed, some closed
mid-stream; the server's RSS and fds are sampled every 50 requests; then SIGTERM (exit 0 expected).
Targets (issue 27): RSS growth <= 5 %, fds flat, no spill left."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

_BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, _BENCH)
from _common import machine  # noqa: E402


QUESTIONS = ["What does the keeper do each evening?", "Name one ship.", "How is the lamp?",
             "Say it shorter.", "What was the weather?", "Who wrote this?"]  # fmt: skip
DOC = "The keeper wrote down the weather, the ships and the state of the lamp every evening. " * 12


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=1000)
    ap.add_argument("--per-chat", type=int, default=20)
    ap.add_argument("--warmup-chats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--server-requests", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.server_requests:
        return _report(a, *server_soak(a.server_requests, a.max_new_tokens), what="server")
    import torch

    import offload

    torch.set_num_threads(2)
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as disk:
        cfg = offload.OffloadConfig(kv_store="tiered", hot_set_bytes=1 << 20, host_mem=1 << 20, disk_dir=disk)
        model = offload.load_model(config=cfg)
        samples, turns, spilled, t0 = [], 0, 0, time.perf_counter()
        while turns < a.turns:
            with offload.Chat(model, system="Be brief.") as chat:
                chat.send(DOC + QUESTIONS[0], max_new_tokens=a.max_new_tokens)
                turns += 1
                for i in range(1, a.per_chat):
                    if turns >= a.turns:
                        break
                    chat.send(QUESTIONS[i % len(QUESTIONS)], max_new_tokens=a.max_new_tokens)
                    turns += 1
                spilled = max(spilled, chat.store.stats().get("disk_bytes", 0) if hasattr(chat.store, "stats") else 0)
            gc.collect()
            samples.append((turns, proc.memory_info().rss, proc.num_fds()))
            print(f"turn {turns:5d}  rss {samples[-1][1] / 2**20:8.1f} MiB  fds {samples[-1][2]}", flush=True)
        left = sorted(str(p.relative_to(disk)) for p in Path(disk).rglob("*"))
    _report(a, samples, left, spilled, t0, what="api")


def _report(a, samples, left, spilled, t0, what):
    """One JSON row: RSS and fds at the end of warm-up vs the end, spill left, pass/fail."""
    warm = samples[min(a.warmup_chats, len(samples)) - 1]
    end = samples[-1]
    row = {
        "bench": f"soak-{what}", "machine": machine(), "turns": end[0], "per_chat": a.per_chat,
        "max_new_tokens": a.max_new_tokens, "seconds": round(time.perf_counter() - t0, 1),
        "rss_warm_mib": round(warm[1] / 2**20, 1), "rss_end_mib": round(end[1] / 2**20, 1),
        "rss_growth_pct": round(100 * (end[1] - warm[1]) / warm[1], 2),
        "rss_max_mib": round(max(s[1] for s in samples[a.warmup_chats - 1 :]) / 2**20, 1),
        "fds_warm": warm[2], "fds_end": end[2], "fds_max": max(s[2] for s in samples[a.warmup_chats - 1 :]),
        "max_spilled_mib": round(spilled / 2**20, 1), "spill_left": left,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }  # fmt: skip
    row["pass"] = row["rss_growth_pct"] <= 5 and row["fds_end"] <= row["fds_warm"] and not left
    print(json.dumps(row))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")


def _request(url: str, i: int, max_new: int) -> str:
    """Request i: a chat over one of 3 documents (2 KV slots: reuse and eviction both happen), a
    follow-up every other time; every 5th streamed, every 25th streamed and dropped after its first
    chunk. Returns its outcome."""
    import httpx

    doc = f"Log {i % 3}: " + DOC
    msgs = [{"role": "user", "content": doc + QUESTIONS[0]}]
    if i % 2:
        msgs += [{"role": "assistant", "content": "The weather."}, {"role": "user", "content": QUESTIONS[i % 6]}]
    body = {"messages": msgs, "max_tokens": max_new, "temperature": 0}
    with httpx.Client(timeout=600) as c:
        if i % 5 == 0:
            with c.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and i % 25 == 0:
                        return "dropped"
            return f"stream {r.status_code}"
        return str(c.post(url + "/v1/chat/completions", json=body).status_code)


def server_soak(n: int, max_new: int):
    """(samples, spill left, 0, t0) of `n` requests through a real offload-serve."""
    import re
    import signal
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        disk, log = Path(tmp) / "spill", Path(tmp) / "serve.log"
        exe = str(Path(sys.executable).parent / "offload-serve")
        args = ["--port", "0", "-c", "2048", "--disk-dir", str(disk), "--host-mem", "1M", "--gpu-mem", "1105M",
                "--queue-size", "8"]  # fmt: skip
        with open(log, "w") as f:
            proc = subprocess.Popen([exe, *args], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while not (m := re.search(r"ready on (http://\S+) ", log.read_text())):
            if proc.poll() is not None:
                raise SystemExit(log.read_text())
            time.sleep(0.2)
        url, ps, samples, outcomes = m.group(1), psutil.Process(proc.pid), [], {}
        with ThreadPoolExecutor(4) as pool:
            for start in range(0, n, 50):
                for out in pool.map(lambda i: _request(url, i, max_new), range(start, min(n, start + 50))):
                    outcomes[out] = outcomes.get(out, 0) + 1
                while httpx.get(url + "/health", timeout=60).json()["running"]:
                    time.sleep(0.1)
                samples.append((min(n, start + 50), ps.memory_info().rss, ps.num_fds()))
                print(f"request {samples[-1][0]:5d}  rss {samples[-1][1] / 2**20:8.1f} MiB  fds {samples[-1][2]}  "
                      f"{outcomes}", flush=True)  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
        text = log.read_text()
        print(f"exit {rc}; tracebacks in the log: {text.count('Traceback')}; outcomes {outcomes}")
        left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*")) if disk.exists() else []
    return samples, left, 0, t0


if __name__ == "__main__":
    main()
