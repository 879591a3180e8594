"""The two tier design choices, replayed on a decode trace (`python bench/tiers.py capture` first):

    python bench/tier_choices.py chunk     # chunk size: attention mass kept at a token budget; acquire's cost
    python bench/tier_choices.py eviction  # LRU's hit rate replaying decode selections, vs Belady's optimum

Each prints one table; `--json FILE` appends one JSON row per table line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from _common import emit

from offload.tiers.manager import TierManager


def _load_trace(args):
    if not os.path.exists(args.trace):
        sys.exit(f"no trace at {args.trace}: run `python bench/tiers.py capture` first")
    return torch.load(args.trace)


def _chunk_mass(att, start, c, sinks, window):
    """Per (layer, head, step): mass of every full chunk of the body, and of sinks + window.
    att [L, Hkv, T, N] (step t sees keys < start + t + 1)."""
    n_chunks = (start - sinks - window) // c  # body of the first step; same chunks for all steps
    body = att[..., sinks : sinks + n_chunks * c].float().unflatten(-1, (n_chunks, c)).sum(-1)
    rest = att.float().sum(-1) - body.sum(-1)  # sinks + everything after the body (window, new)
    return body, rest


# -- chunk --------------------------------------------------------------------------------------
def bench_chunk(args):
    tr = _load_trace(args)
    att, start = tr["attention"], tr["prompt"]
    rows = []
    for c in (16, 32, 64, 128):
        body, rest = _chunk_mass(att, start, c, 4, 64)
        for budget in (128, 256, 512, 1024):
            k = max(1, budget // c)
            top = body.topk(min(k, body.shape[-1]), dim=-1).values.sum(-1)
            recall = (top + rest)  # attention mass that sparse attention would keep, per query
            rows.append({"chunk": c, "budget_tok": budget, "chunks/head": k, "mass_kept": recall.mean().item(),
                         "worst_5%": recall.flatten().quantile(0.05).item()})  # fmt: skip
    # policy cost per chunk: what the decode loop pays in Python per selected chunk
    mgr = TierManager([4096], host_capacity=1 << 20)
    for _ in range(8192):
        mgr.add_chunk(0)
    ids = list(range(0, 8192, 8))[:512]
    t0 = time.perf_counter()
    for _ in range(20):
        mgr.acquire(0, ids)
        mgr.release(0)
    us = (time.perf_counter() - t0) / (20 * len(ids)) * 1e6
    emit(args, f"chunk size: attention mass kept by the best chunks (sinks 4 + window 64 always kept); "
                f"manager acquire costs {us:.2f} us per chunk", rows)  # fmt: skip


# -- eviction -----------------------------------------------------------------------------------
def _selections(att, start, c, k):
    """Per layer: per step, the union over KV heads of the oracle top-k chunks."""
    body, _ = _chunk_mass(att, start, c, 4, 64)  # [L, Hkv, T, M]
    top = body.topk(k, dim=-1).indices  # [L, Hkv, T, k]
    n_layers, _, steps, _ = top.shape
    return [[sorted(set(top[li, :, t].flatten().tolist())) for t in range(steps)] for li in range(n_layers)]


def _belady(trace, slots):
    """Offline optimum (evict the chunk used farthest in the future): an upper bound."""
    nxt, hits, cache = {}, 0, set()
    future = [dict() for _ in trace]
    for t in range(len(trace) - 1, -1, -1):
        future[t] = dict(nxt)
        for ch in trace[t]:
            nxt[ch] = t
    for t, step in enumerate(trace):
        for ch in step:
            if ch in cache:
                hits += 1
                continue
            if len(cache) >= slots:
                keep = set(step)
                victim = max((x for x in cache if x not in keep), key=lambda x: future[t].get(x, 1 << 30))
                cache.remove(victim)
            cache.add(ch)
    return hits


def bench_eviction(args):
    tr = _load_trace(args)
    att, start = tr["attention"], tr["prompt"]
    rows = []
    for c, k in ((16, 8), (64, 4)):
        sel = _selections(att, start, c, k)
        n_chunks = (start - 68) // c  # body chunks past sinks 4 + window 64, as _selections
        peak = max(len(s) for layer in sel for s in layer)
        total = sum(len(s) for layer in sel for s in layer)
        for mult in (1.0, 1.5, 2.0, 3.0):
            slots = min(n_chunks, max(peak, int(mult * k * att.shape[1])))
            row = {"chunk": c, "top_k/head": k, "slots": slots, "body_chunks": n_chunks}
            hits = 0
            for layer in sel:
                mgr = TierManager([slots], host_capacity=1 << 20)  # LRU, as the store
                for _ in range(n_chunks):
                    mgr.add_chunk(0)  # prefill fills the free slots with chunks 0..slots-1
                for step in layer:
                    mgr.acquire(0, step)
                    mgr.release(0)
                hits += mgr.counters["hits"]
            row["lru"] = hits / total
            row["belady"] = sum(_belady(layer, slots) for layer in sel) / total
            rows.append(row)
    emit(args, "eviction: hit rate replaying oracle top-k selections (union over KV heads) per layer", rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["chunk", "eviction"])
    ap.add_argument("--json", help="append result rows to this JSONL file")
    ap.add_argument("--trace", default=os.path.join(tempfile.gettempdir(), "offload-trace.pt"))
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    globals()[f"bench_{args.what}"](args)


if __name__ == "__main__":
    main()
