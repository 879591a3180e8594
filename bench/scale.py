"""A decode step at 32k..1M tokens over the tiered store, on a CPU, with half the body on disk (issue 25).

    python bench/scale.py --lengths 32k,128k,512k,1M --policies token2,token --budget 2048 --steps 24

Per (length, policy) a child process builds a `TieredKVStore` of `--layers` layers of Llama-3.1-8B KV
geometry (8 KV heads x 128, bf16 storage), fills it with synthetic KV (below), caps host memory so
that at least `--disk-share` of the body is spilled to the mmap'd disk tier, syncs and drops the page
cache (so the step really reads the disk), then runs `--warmup` + `--steps` decode steps: per layer
one step's selection + fetch + attention (`store.sparse_attention.attend`, the engine's own call),
then the new token appended. Reported per size: median / p90 ms of a layer step and its split
(selection; fetch = making the chosen chunks resident from host or disk; attention = the rest: the
gather of the selected tokens and the SDPA), chunks and bytes read per step from each tier (the
manager's miss counters; `disk_read` = bytes the kernel really read from the device,
/proc/self/io), fill time, spill bytes on disk, host-pool bytes, summaries, peak RSS.

The budget is a token count (`--budget`, per layer): a GPU keeps the selection resident, so its size
does not grow with the context; only what finds it (the summaries) may.

Synthetic KV: keys are offset + scale * (topic + noise), the topic changing every ~256 tokens among
64 recurring ones (a long document's sections), so that attention concentrates on some sections;
queries follow one slowly drifting direction (q_t = a q_{t-1} + sqrt(1 - a^2) e, a = 0.9) plus a
standing topic and a second topic that changes at every step, the way a decode step's query resembles
the previous one's but looks somewhere new too: every step selects some tokens the previous did not,
so it fetches from host and disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _common import machine

KV_HEADS, HEAD_DIM, Q_HEADS = 8, 128, 32  # Llama-3.1-8B
PIECE = 8192  # tokens per append while filling
TOPICS, SECTION = 64, 256


def _tokens(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1 << 20}.get(t[-1], 1)
    return int(float(t[:-1] if t[-1] in "km" else t) * mult)


class Synthetic:
    """Deterministic KV and queries (see the module doc); piece(p0, n) gives tokens p0..p0+n-1."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.scale = 0.5 + torch.rand(KV_HEADS, 1, HEAD_DIM, generator=g) * 1.5
        self.offset = torch.randn(KV_HEADS, 1, HEAD_DIM, generator=g) * 0.5
        self.topics = torch.randn(TOPICS, KV_HEADS, HEAD_DIM, generator=g)
        self.seed = seed
        self.q = torch.randn(Q_HEADS, HEAD_DIM, generator=g)

    def piece(self, p0: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + p0)
        sections = torch.arange(p0, p0 + n) // SECTION
        topic = self.topics[(sections * 2654435761) % TOPICS].permute(1, 0, 2)  # [Hkv, n, D]
        k = self.offset + self.scale * (topic + 0.7 * torch.randn(KV_HEADS, n, HEAD_DIM, generator=g))
        v = torch.randn(KV_HEADS, n, HEAD_DIM, generator=g)
        return k[None].to(torch.bfloat16), v[None].to(torch.bfloat16)

    def query(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 7919 + step)
        self.q = 0.9 * self.q + (1 - 0.81) ** 0.5 * torch.randn(Q_HEADS, HEAD_DIM, generator=g)
        topic = self.topics[0] + 0.7 * self.topics[1 + (step * 7) % (TOPICS - 1)]
        return (0.6 * self.q + topic.repeat_interleave(Q_HEADS // KV_HEADS, 0))[None, :, None].to(torch.bfloat16)


class Phases:
    """Time spent inside two of the store's calls during a step (selection, fetch)."""

    def __init__(self, store):
        self.t = {"select": 0.0, "fetch": 0.0}
        self._wrap(store.selector, "select", "select")
        self._wrap(store, "pin", "fetch")  # chunks made resident, or (a token cache) rows
        self._wrap(store, "resident_tokens", "fetch")

    def _wrap(self, owner, name, label):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.t[label] += time.perf_counter() - t0

        setattr(owner, name, timed)


def _io_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes"))


def _drop_page_cache(files: list[str]) -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        for path in files:  # clean pages of our own files: evicted without privileges
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise"


def child(a) -> dict:
    from offload.config import OffloadConfig, SparseConfig
    from offload.sparse import make_policy
    from offload.store_spec import StoreSpec
    from offload.tiers.store import TieredKVStore

    torch.set_num_threads(a.threads)
    n, layers = a.length, a.layers
    policy = make_policy(a.policy)
    sparse = SparseConfig(budget=a.budget, policy=policy, split="uniform", whole_below=0.0, rest=None)
    chunk = policy.chunk
    chunk_bytes = chunk * KV_HEADS * HEAD_DIM * 2 * 2
    body_bytes = n * KV_HEADS * HEAD_DIM * 2 * 2
    host_mem = int(body_bytes * (1 - a.disk_share)) // chunk_bytes * chunk_bytes
    hot = a.hot_chunks * chunk_bytes * layers  # chunk slots; a token cache: as many rows, with their index
    if a.residency == "auto":
        hot = a.hot_chunks * chunk * KV_HEADS * StoreSpec.token_slot_bytes(HEAD_DIM, 2) * layers
    cfg = OffloadConfig(ctx=n + a.warmup + a.steps + 64, kv_store="tiered", sparse=sparse, host_mem=host_mem,
                        hot_set_bytes=hot, disk_dir=a.disk_dir)  # fmt: skip
    syn = Synthetic(a.seed)
    spec = StoreSpec.derive(cfg, layers, KV_HEADS, HEAD_DIM, torch.bfloat16, "cpu")
    if a.residency == "chunks":  # the hot set as chunk slots whatever the selection (before the token cache)
        spec = dataclasses.replace(spec, token_slots=0, gpu_slots=(min(a.hot_chunks, spec.capacity),) * layers)
    store = TieredKVStore(layers, KV_HEADS, HEAD_DIM, torch.bfloat16, "cpu", spec=spec)
    fill = 0.0
    for p0 in range(0, n, PIECE):
        k, v = syn.piece(p0, min(PIECE, n - p0))
        t0 = time.perf_counter()
        for layer in range(layers):
            store.append(layer, k, v)
        fill += time.perf_counter() - t0
    filled = store.stats()
    dropped = _drop_page_cache(store.spill_files)
    phases = Phases(store)
    attend = store.sparse_attention.attend
    scaling = HEAD_DIM**-0.5
    steps, split, tiers = [], [], []
    for i in range(a.warmup + a.steps):
        q = syn.query(i)
        k, v = syn.piece(n + i, 1)
        for layer in range(layers):
            before, io0 = store.stats(), _io_read()
            phases.t.update(select=0.0, fetch=0.0)
            t0 = time.perf_counter()
            out = attend(layer, q, scaling)
            dt = time.perf_counter() - t0
            assert out is not None and torch.isfinite(out.float()).all()
            after = store.stats()
            if i >= a.warmup:
                steps.append(dt * 1000)
                split.append((phases.t["select"] * 1000, phases.t["fetch"] * 1000))
                tiers.append(tuple(after[c] - before[c] for c in ("hits", "misses_host", "misses_disk"))
                             + (_io_read() - io0,)
                             + tuple(after.get(c, 0) - before.get(c, 0) for c in ("token_misses", "rounds")))  # fmt: skip
            store.append(layer, k, v)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    st = store.stats()
    row = {
        "bench": "scale", "tokens": n, "policy": a.policy, "budget": a.budget, "layers": layers,
        "steps": a.steps, "step_ms": round(med(steps), 2),
        "step_p90_ms": round(sorted(steps)[int(0.9 * (len(steps) - 1))], 2),
        "select_ms": round(med([s for s, _ in split]), 2), "fetch_ms": round(med([f for _, f in split]), 2),
        "attend_ms": round(med([t - s - f for t, (s, f) in zip(steps, split)]), 2),
        "chunks_hit": med([t[0] for t in tiers]), "chunks_host": med([t[1] for t in tiers]),
        "chunks_disk": med([t[2] for t in tiers]),
        "mean_chunks_host": round(statistics.mean([t[1] for t in tiers]), 1),
        "mean_chunks_disk": round(statistics.mean([t[2] for t in tiers]), 1),
        "host_read_mb": round(med([t[1] for t in tiers]) * chunk_bytes / 2**20, 2),
        "disk_chunk_mb": round(med([t[2] for t in tiers]) * chunk_bytes / 2**20, 2),
        "disk_read_mb": round(med([t[3] for t in tiers]) / 2**20, 2),
        "residency": "tokens" if spec.token_slots else "chunks", "rows_fetched": med([t[4] for t in tiers]),
        "fetched_mb": round((med([t[1] + t[2] for t in tiers]) * chunk_bytes
                             + med([t[4] for t in tiers]) * 2 * HEAD_DIM * 2) / 2**20, 2),
        "rounds_per_step": round(statistics.mean([t[5] for t in tiers]), 2),
        "token_resplits": st.get("token_resplits", 0),
        "fill_s": round(fill, 1), "spill_bytes": st["disk_bytes"], "host_bytes": st["host_bytes"],
        "disk_share": round(filled["disk_chunks"] / max(1, filled["chunks"]), 3),
        "host_cap_bytes": host_mem, "hot_set_bytes": st["gpu_pool_bytes"] + st["token_cache_bytes"],
        "summary_bytes": store.selector.state.nbytes, "working_set_bytes": st["working_set_bytes"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "page_cache": dropped, "threads": a.threads, "machine": machine(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    store.close()
    return row


def _other(r: dict) -> int:
    """Peak RSS less the host pool, the hot set ("GPU" pool: RAM here) and the summaries."""
    return r["peak_rss_bytes"] - r["host_bytes"] - r["hot_set_bytes"] - r["summary_bytes"]


def _table(rows: list[dict]) -> str:
    head = (f"{'tokens':>9} {'policy':>7} {'hot set':>7} | {'step ms':>8} {'p90':>7} | {'select':>7} {'fetch':>7} "
            f"{'attend':>7} | {'chunks hit/host/disk':>21} {'rows':>6} {'MB in':>6} {'rounds':>6} {'disk MB':>8} | "
            f"{'fill s':>7} {'spill GiB':>9} {'host GiB':>8} {'summ MiB':>8} {'RSS GiB':>8} {'other':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    g = 2**30
    for r in rows:
        tiers = f"{r['chunks_hit']:.0f}/{r['chunks_host']:.0f}/{r['chunks_disk']:.0f}"
        lines.append(f"{r['tokens']:>9,} {r['policy']:>7} {r['residency']:>7} | {r['step_ms']:>8.1f} "
                     f"{r['step_p90_ms']:>7.1f} | {r['select_ms']:>7.1f} {r['fetch_ms']:>7.1f} {r['attend_ms']:>7.1f} | "
                     f"{tiers:>21} {r['rows_fetched']:>6.0f} {r['fetched_mb']:>6.1f} {r['rounds_per_step']:>6.2f} "
                     f"{r['disk_read_mb']:>8.2f} | {r['fill_s']:>7.1f} {r['spill_bytes'] / g:>9.2f} "
                     f"{r['host_bytes'] / g:>8.2f} {r['summary_bytes'] / 2**20:>8.0f} "
                     f"{r['peak_rss_bytes'] / g:>8.2f} {_other(r) / g:>6.2f}")  # fmt: skip
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="32k,128k,512k,1M")
    ap.add_argument("--policies", default="token2,token", help="comma list of selection policies")
    ap.add_argument("--budget", type=int, default=2048, help="selected body tokens per layer and KV head")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=24, help="timed decode steps (median)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--disk-share", type=float, default=0.5, help="least share of the body spilled to disk")
    ap.add_argument("--hot-chunks", type=int, default=16384,
                    help="GPU-pool chunks per layer (RAM on a CPU); a token cache holds their tokens' rows")
    ap.add_argument("--residency", default="auto", choices=["auto", "chunks"],
                    help="auto: the store's rule (a token cache where chunk slots cannot hold the context); "
                         "chunks: chunk slots always (the hot set before the token cache)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disk-dir", default=None, help="spill root (default: a temporary directory)")
    ap.add_argument("--json", default=None, help="append one JSON row per (length, policy)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "LENGTH,POLICY": one row, as JSON
    a = ap.parse_args()
    if a.child:
        length, a.policy = a.child.split(",")
        a.length = _tokens(length)
        print(json.dumps(child(a)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="offload-scale-", dir=a.disk_dir) as spill:
        for length in a.lengths.split(","):
            for policy in a.policies.split(","):
                argv = [sys.executable, __file__, "--child", f"{length},{policy}", "--disk-dir", spill]
                for opt in ("budget", "layers", "steps", "warmup", "disk_share", "hot_chunks", "threads", "seed",
                            "residency"):
                    argv += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
                out = subprocess.run(argv, check=True, capture_output=True, text=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(_table(rows).splitlines()[-1] if len(rows) > 1 else _table(rows), flush=True)
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    print()
    print(_table(rows))


if __name__ == "__main__":
    main()
