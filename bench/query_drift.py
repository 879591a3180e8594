#!/usr/bin/env python
"""How far a layer's query moves from one decode step to the next: can a kept selection tell when
it has gone stale?

Question: `OffloadConfig.select_every` keeps a layer's chunk selection for several steps (most of a
CPU step's cost is choosing), and the needle probe says it loses the needles (sparse-smollm2.md,
session 7). Would a cheap trigger — choose again once the query has turned (cosine to the query the
selection was made for below a threshold) — keep the speed and the needles? Only if queries mostly
stay put. This measures it: the stock model's post-RoPE queries at the last --steps positions of a
natural-text prompt (teacher-forced: the queries decode would compute), per layer, the cosine of
each query head's query with its own query `lag` steps earlier — the median over (head, step), and
the share of steps where *every* head of the layer stays at or above 0.8 and 0.9 (what a per-layer
trigger at that threshold would keep).

    python bench/query_drift.py --context 2k --steps 64 --lags 1,4,16
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import time

import torch
from _common import machine, parse_with_threads


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", default="2k", help="prompt tokens before the measured steps (2k = 2048)")
    ap.add_argument("--steps", type=int, default=64, help="query positions measured (the prompt's last)")
    ap.add_argument("--lags", default="1,4,16", help="comma list of step distances")
    ap.add_argument("--seed", type=int, default=0, help="start of the natural-text prompt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="append one JSON row per lag to this file")
    a = parse_with_threads(ap)
    import offload
    from offload.eval.modes import parse_length
    from offload.eval.recall import capture_qk, natural_ids
    from offload.loading import load_reference

    n, lags = parse_length(a.context), [int(x) for x in a.lags.split(",")]
    if a.steps <= max(lags):
        raise SystemExit(f"--steps ({a.steps}) must exceed the largest lag ({max(lags)})")
    model = offload.load_model(config=offload.OffloadConfig(ctx=n + a.steps))
    hf = load_reference(model)
    captured, _ = capture_qk(hf, natural_ids(model.tokenizer, n + a.steps, a.seed), a.steps)
    layers = sorted(captured)
    print(f"{'layer':>5} | " + " | ".join(f"lag {g}: median, all>=0.8, all>=0.9" for g in lags))
    table = {g: [] for g in lags}  # lag -> per layer (median, share >= 0.8, share >= 0.9)
    for layer in layers:
        q = captured[layer][0]  # [H, steps, D]
        cells = []
        for g in lags:
            cos = torch.nn.functional.cosine_similarity(q[:, g:], q[:, :-g], dim=-1)  # [H, steps - g]
            worst = cos.min(0).values  # the layer's trigger looks at its most-turned head
            row = (float(cos.median()), float((worst >= 0.8).float().mean()), float((worst >= 0.9).float().mean()))
            table[g].append(row)
            cells.append(f"{row[0]:>6.2f} {row[1]:>10.2f} {row[2]:>10.2f}")
        print(f"{layer:>5} | " + " | ".join(cells), flush=True)
    means = {g: [sum(r[i] for r in table[g]) / len(layers) for i in range(3)] for g in lags}
    print(" mean | " + " | ".join(f"{m[0]:>6.2f} {m[1]:>10.2f} {m[2]:>10.2f}" for m in means.values()))
    if a.json:
        base = {"bench": "query_drift", "context": n, "steps": a.steps, "seed": a.seed, "machine": machine(),
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        with open(a.json, "a") as f:
            for g in lags:
                f.write(json.dumps({**base, "lag": g, "median_cos": [round(r[0], 4) for r in table[g]],
                                    "kept_at_0.8": round(means[g][1], 4), "kept_at_0.9": round(means[g][2], 4),
                                    "mean_median_cos": round(means[g][0], 4)}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
