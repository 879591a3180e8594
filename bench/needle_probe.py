#!/usr/bin/env python
"""Teacher-forced needle retrieval on multi_needle, per selection policy and budget.

Question: at a budget, how many of the 8 needles' values does sparse decode still read, against
full attention, on the same prompts? (`offload.eval.needle_probe`: every config is fed the reference
answer "- key: value" line by line; a value token counts when the config's argmax is that token.)
The generated multi_needle score cannot say this on a 135M model: full attention itself lists ~1.5
of 8 values. Row "dense" is offload without a budget (exact attention, the reference); "ratio" is a
row's value-token accuracy over dense's, pooled over samples. `--set KEY=VALUE[,KEY=VALUE]` adds, per sparse
row, one more row with those config fields changed (e.g. share=0.5, kv_chunk=8: `_common.with_fields`).
Samples are the eval's (`plan_samples("multi_needle", ...)`, --seed as offload-eval's).

    python bench/needle_probe.py --length 4k --samples 10 --policies token,bound,quest,landmark,snapkv,h2o \
        --budgets 1/16,1/32 --json bench/results/needle_probe-smollm2.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import json
import time

import torch
from _common import add_sparse_args, machine, parse_with_threads, set_fields, unit_facts, with_fields, with_sparse


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", default="4k", help="sample length, the eval's units (4k = 4096)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--select-every", type=int, default=1, help="OffloadConfig.select_every, sparse rows")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="extra rows: each sparse row again with these config fields changed")  # fmt: skip
    add_sparse_args(ap, "token,bound,quest,landmark,snapkv,h2o", "1/16,1/32", "(config, sample set)")
    a = parse_with_threads(ap)
    import offload
    from offload.eval.modes import Mode, parse_budget, parse_length
    from offload.eval.needle_probe import needle_probe
    from offload.eval.runner import plan_samples

    n = parse_length(a.length)
    model = offload.load_model(a.model, config=offload.OffloadConfig(ctx=n))
    samples = plan_samples("multi_needle", model.tokenizer, n, a.samples, a.seed)
    extras = [(s, set_fields(s)) for s in a.set]
    specs = {"dense": (model.config, None)}  # name -> (config, budget as the eval's modes give it)
    for spec in a.policies.split(","):
        for b in a.budgets.split(","):
            budget = parse_budget(b)
            cfg = with_sparse(model.config, spec.strip(), 1, select_every=a.select_every)  # validates up front
            specs[f"{spec.strip()}@{budget}"] = (cfg, budget)
            for label, fields in extras:
                try:
                    specs[f"{spec.strip()}@{budget}[{label}]"] = (with_fields(cfg, **fields), budget)
                except (offload.ConfigError, TypeError) as e:  # TypeError: no such field
                    raise SystemExit(f"--set {label}: {e}") from None
    base = {"model": model.model_dir.name,
        "bench": "needle_probe", "task": "multi_needle", "length": n, "samples": a.samples, "seed": a.seed,
        "select_every": a.select_every, "device": str(model.device), "dtype": str(model.dtype),
        "threads": torch.get_num_threads(), "machine": machine(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    totals = {name: [0, 0, 0, 0] for name in specs}
    t0 = time.perf_counter()
    for i, sample in enumerate(samples):
        # budgets in tokens follow each sample's own prompt length, as the eval's sparse modes do
        rows = {name: model if b is None else dataclasses.replace(
            model, config=with_fields(cfg, budget=Mode("sparse", b).budget_tokens(sample.n_prompt_tokens)))
            for name, (cfg, b) in specs.items()}  # fmt: skip
        for r in needle_probe(rows, sample):
            t = totals[r.name]
            t[0] += r.value_tokens
            t[1] += r.value_total
            t[2] += r.needles_exact
            t[3] += r.needles_total
        print(f"sample {i + 1}/{len(samples)} done, {time.perf_counter() - t0:.0f} s", flush=True)
    ref = totals["dense"][0] / max(1, totals["dense"][1])
    print(f"multi_needle at {n} tokens, {a.samples} samples, {torch.get_num_threads()} threads")
    print(f"{'config':>34} | {'value tok':>9} | {'needles':>7} | {'ratio':>5}")
    for name, (vt, vn, ne, nn) in totals.items():
        acc = vt / max(1, vn)
        row = {**base, "config": name, "value_tokens": vt, "value_total": vn, "needles_exact": ne,
               "needles_total": nn, "value_acc": round(acc, 4), **unit_facts(specs[name][0]),
               "ratio_to_dense": round(acc / ref, 4) if ref else None}  # fmt: skip
        print(f"{name:>34} | {acc:>9.3f} | {ne / max(1, nn):>7.3f} | {row['ratio_to_dense'] or 0:>5.2f}", flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
