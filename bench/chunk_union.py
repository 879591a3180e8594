#!/usr/bin/env python
"""How many KV chunks does a decode step's selection touch, per layer? The GPU holds and fetches whole
chunks (every KV head's C tokens), but `token` picks single tokens per KV head: the union over a
layer's heads of the chunks holding its picks is what must be resident for the step — if it is most
of the layer, a hot set the size of the budget cannot serve it and every step reads (rounds) from the
host. Also: how much of a layer's union is new since its previous step (what a step must fetch if
the previous one's chunks stayed resident), and how much of layer l+1's union lies in layer l's
(whether one layer's picks predict the next's, for a prefetch).

Natural-text prompt (`natural_ids`), the real model, greedy decode of --new tokens with the default
sparse config at each budget; per (length, budget): means over steps and selecting layers.

    python bench/chunk_union.py --lengths 4k,8k --budgets 1/16,1/32 --new 8 --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import statistics

import torch
from _common import spy_selections, text_grid


def measure(model, ids: list[int], budget, new: int, unit: str) -> dict:
    from offload.config import SparseConfig
    from offload.engine import Engine
    from offload.sparse import make_policy

    sparse = SparseConfig(budget=budget, policy=make_policy("token", unit=unit))
    m = model.__class__(hf=model.hf, tokenizer=model.tokenizer, model_dir=model.model_dir,
                        config=model.config.replace(sparse=sparse, kv_store="tiered", ctx=len(ids) + new + 8))  # fmt: skip
    store = m.new_store()
    seen = spy_selections(store)
    try:
        engine, c = Engine(m, store), store.layout.chunk
        tok = int(engine.prefill(ids).argmax())
        union, fresh, from_below, prev = [], [], [], {}
        for _ in range(new):
            seen.clear()
            tok = int(engine.decode(tok).argmax())
            sets = {}
            for layer, chosen in seen.items():
                ids_ = chosen[chosen >= 0]
                sets[layer] = set((ids_ // c if store.selector.tokens else ids_).tolist())
                union.append(len(sets[layer]) / max(1, store.n_chunks(layer)))
                if layer in prev and sets[layer]:
                    fresh.append(len(sets[layer] - prev[layer]) / len(sets[layer]))
                if layer - 1 in sets and sets[layer]:
                    from_below.append(len(sets[layer] & sets[layer - 1]) / len(sets[layer]))
            prev = sets
        mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
        return {"layers": len(prev), "union": mean(union), "fresh": mean(fresh), "from_below": mean(from_below)}
    finally:
        store.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", default="token,chunk", help="the token policy's unit: single tokens or chunks")
    grid = text_grid(ap, "| context | budget | unit | selecting layers | union / layer's chunks | new since last step "
                         "| in layer l-1's union |\n|---|---|---|---|---|---|---|")
    a = next(grid)
    for model, n, ids, b, budget in grid:
        for unit in a.units.split(","):
            r = measure(model, ids, budget, a.new, unit)
            print(f"| {n:,} | {b} | {unit} | {r['layers']} | {r['union']:.2f} | {r['fresh']:.2f} | "
                  f"{r['from_below']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
