#!/usr/bin/env python
"""What does a token cache fetch per decode step, and would the layer below predict it? With a hot
set of single (KV head, token) rows (tiers/token_cache.py) a step fetches the rows its picks miss;
a pipelined fetch would copy layer l's misses while layer l-1 attends — if something known by then
names them. The candidate: layer l-1's picks at the same step (chunk unions overlap 68-72 % between
neighbouring layers, bench/results/chunk-union-smollm2.md).

SmolLM2 on a natural-text prompt, the default sparse config (`token`, adaptive split) at each budget,
the budget a token count (the fraction of the prompt: the plan caps `--budget auto` at a count), a hot
set of --hot times its rows (1: what the memory plan gives at its capped budget). Per (length, budget,
hot): means over --new greedy steps after the first (which fills the empty cache) and the selecting
layers of
- rows fetched per layer step, as a share of its picks (the cache's misses, `token_misses`);
- new picks: picks (row, position) not picked by the same layer and row at the previous step;
- of the new picks, the share whose position layer l-1 picked at the same step in the same row (KV
  head), and in any row: what a prefetch from the layer below could have in flight;
- layer steps that could not be held (rounds; a layer read whole is, when its chunks outgrow their
  slots) and new splits of the cache between layers.

    python bench/row_prefetch.py --lengths 4k,8k --budgets 1/16,1/32 --hot 1,2 --new 8 --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import statistics

import torch
from _common import spy_selections, text_grid


def _rows(chosen: torch.Tensor) -> list[set[int]]:
    """Per row, its picked positions (the -1 padding left out)."""
    return [set(r[r >= 0].tolist()) for r in chosen]


def measure(model, ids: list[int], budget, new: int, hot: float) -> dict:
    from offload.config import SparseConfig
    from offload.engine import Engine
    from offload.sparse import make_policy
    from offload.store_spec import StoreSpec

    n_layers, n_kv, d = model.kv_shape()
    tokens = budget if isinstance(budget, int) else int(budget * len(ids))
    budget = tokens  # a token count, as the plan caps it: it does not grow with the decoded tokens
    hot_bytes = int(hot * tokens) * n_kv * n_layers * StoreSpec.token_slot_bytes(d, model.dtype.itemsize)
    sparse = SparseConfig(budget=budget, policy=make_policy("token"))
    cfg = model.config.replace(sparse=sparse, kv_store="tiered", ctx=len(ids) + new + 8, hot_set_bytes=hot_bytes)
    m = model.__class__(hf=model.hf, tokenizer=model.tokenizer, model_dir=model.model_dir, config=cfg)
    store = m.new_store()
    assert store.token_cache is not None, "the hot set holds the whole context: nothing to fetch"
    seen = spy_selections(store)
    try:
        engine = Engine(m, store)
        tok = int(engine.prefill(ids).argmax())
        fetched, fresh, same_row, any_row, prev = [], [], [], [], {}
        before = store.stats()
        for step in range(new + 1):  # step 0 fills the empty cache: left out of the means
            seen.clear()
            was = store.stats()["token_misses"]
            if step == 1:
                before = store.stats()
            tok = int(engine.decode(tok).argmax())
            picks = sum(int((c >= 0).sum()) for c in seen.values())
            if step:
                fetched.append((store.stats()["token_misses"] - was) / max(1, picks))
            sets = {layer: _rows(c) for layer, c in seen.items()}
            for layer, rows in sets.items():
                if layer not in prev:
                    continue
                new_picks = [(r, p) for r, ps in enumerate(rows) for p in ps - prev[layer][r]]
                n_picks = sum(map(len, rows))
                if not new_picks or not n_picks:
                    continue
                fresh.append(len(new_picks) / n_picks)
                below = sets.get(layer - 1)
                if below is not None:
                    anywhere = set().union(*below)
                    same_row.append(sum(p in below[r] for r, p in new_picks) / len(new_picks))
                    any_row.append(sum(p in anywhere for _, p in new_picks) / len(new_picks))
            prev = sets
        after = store.stats()
        mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
        return {"fetched": mean(fetched), "fresh": mean(fresh), "same_row": mean(same_row), "any_row": mean(any_row),
                "rounds": (after["rounds"] - before["rounds"]) / new,
                "resplits": after["token_resplits"] - before["token_resplits"]}  # fmt: skip
    finally:
        store.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hot", default="1,2", help="hot set sizes, in multiples of the budget's rows")
    grid = text_grid(ap, "| context | budget | hot set | rows fetched / picks | new picks | of them in l-1's picks: "
                         "same head | any head | rounds / step | cache splits |\n|---|---|---|---|---|---|---|---|---|")
    a = next(grid)
    for model, n, ids, b, budget in grid:
        for hot in [float(h) for h in a.hot.split(",")]:
            r = measure(model, ids, budget, a.new, hot)
            print(f"| {n:,} | {b} | {hot:g}x | {r['fetched']:.3f} | {r['fresh']:.3f} | {r['same_row']:.2f} | "
                  f"{r['any_row']:.2f} | {r['rounds']:.1f} | {r['resplits']} |", flush=True)


if __name__ == "__main__":
    main()
