#!/usr/bin/env python
"""What placing a prefill's KV chunks costs, per selection policy and chunk size.

Question: prefill hands the tiered store each layer's keys and values in --piece-token appends;
every full chunk then gets a home (host or disk), maybe a GPU slot, and with a budget its abstract
(or snapkv/h2o score). How long does that take for a --tokens prompt over --layers layers, and
how much do 8-token chunks add over 16? Random K/V of a model's geometry (default SmolLM2-135M:
3 KV heads of 64, 30 layers) — the cost does not depend on the values — in the compute dtype of
the device (fp32 on CPU). No model forward is timed: this is the store's share of prefill. Also
timed: a decode step's appends (one token into every layer; a chunk completes every C steps).

    python bench/chunk_emission.py --tokens 8000 --policies token,quest,snapkv --chunks 16,8
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import machine, parse_with_threads


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--piece", type=int, default=512, help="tokens per append (OffloadConfig.prefill_chunk)")
    ap.add_argument("--policies", default="token,quest,snapkv", help="comma list; 'none' = no budget")
    ap.add_argument("--chunks", default="16,8", help="comma list of kv_chunk values")
    ap.add_argument("--repeats", type=int, default=2, help="best of N")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="append one JSON row per (policy, chunk) to this file")
    a = parse_with_threads(ap)
    from offload import OffloadConfig
    from offload.config import SparseConfig
    from offload.tiers.store import TieredKVStore

    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n, hkv, d = a.tokens, a.kv_heads, a.head_dim
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, hkv, n, d, generator=g).to(dev, dtype)
    v = torch.randn(1, hkv, n, d, generator=g).to(dev, dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"{'policy':>8} | {'chunk':>5} | {'prefill s':>9} | {'decode ms/step':>14}")
    for policy in a.policies.split(","):
        for c in [int(x) for x in a.chunks.split(",")]:
            sparse = None if policy == "none" else SparseConfig(budget=max(1, n // 16), policy=policy)
            cfg = OffloadConfig(ctx=n + 64, kv_chunk=c, device=a.device, sparse=sparse)
            best, step = float("inf"), float("inf")
            for _ in range(a.repeats):
                store = TieredKVStore(a.layers, hkv, d, dtype, dev, config=cfg)
                sync()
                t0 = time.perf_counter()
                for layer in range(a.layers):
                    for p0 in range(0, n, a.piece):
                        store.append(layer, k[:, :, p0 : p0 + a.piece], v[:, :, p0 : p0 + a.piece])
                sync()
                best = min(best, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for i in range(64):
                    for layer in range(a.layers):
                        store.append(layer, k[:, :, i : i + 1], v[:, :, i : i + 1])
                sync()
                step = min(step, (time.perf_counter() - t0) / 64 * 1000)
                store.close()
            print(f"{policy:>8} | {c:>5} | {best:>9.2f} | {step:>14.2f}", flush=True)
            if a.json:
                row = {"bench": "chunk_emission", "policy": policy, "kv_chunk": c, "tokens": n, "layers": a.layers,
                       "kv_heads": hkv, "head_dim": d, "piece": a.piece, "prefill_s": round(best, 3),
                       "decode_append_ms": round(step, 3), "device": str(dev), "dtype": str(dtype),
                       "threads": torch.get_num_threads(), "machine": machine(), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d")}  # fmt: skip
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
