#!/usr/bin/env python
"""Explain the answers a sparse mode lost in an `offload-eval` run (`offload.eval.explain`).

For every answer the run's reference (full, else dense) found and COLUMN did not (`kept.lost_answers`):
rebuild the sample, prefill once, feed both configs the reference's answer, and at the first token
the sparse config would not pick print which layers/heads missed how much of the attention on the
lost value's tokens, and the cause (sketch, split, budget). A closing line sums the lost source
mass by cause over every loss. `--set` changes config fields of the sparse mode (as needle_probe's),
e.g. to check whether a wider budget or another share keeps the answer.

    python bench/explain_loss.py --json bench/results/eval-extract-4k-smollm2.json --column token@1/16
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import json
import sys

from _common import set_fields, with_fields


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="an offload-eval --json result file")
    ap.add_argument("--column", required=True, help="the sparse column to explain, e.g. token@1/16")
    ap.add_argument("--limit", type=int, default=None, help="explain at most this many losses")
    ap.add_argument("--top", type=int, default=8, help="heads listed per loss")
    ap.add_argument("--set", default="", help="KEY=VALUE[,KEY=VALUE]: config fields of the sparse mode")
    a = ap.parse_args()

    import offload
    from offload.errors import ConfigError
    from offload.eval.explain import divergence, explain_step, format_explanation, source_span
    from offload.eval.kept import lost_answers, reference_column
    from offload.eval.modes import parse_mode, sparse_config
    from offload.eval.replay import Prefilled
    from offload.eval.runner import Record, plan_samples

    with open(a.json) as f:
        doc = json.load(f)
    records = [Record.from_json(r) for r in doc["records"]]
    if a.column not in {r.column for r in records}:
        print(f"error: {a.column!r} is not a column of {a.json}", file=sys.stderr)
        return 2
    policy, _, budget = a.column.partition("@")
    ref_col = reference_column(records)
    lost = lost_answers(records, a.column, ref_col)
    print(f"{len(lost)} answers {ref_col} found and {a.column} did not ({a.json})")
    meta = doc["meta"]
    model = offload.load_model(meta.get("model"))
    fields = set_fields(a.set)
    totals: dict[str, float] = {}
    by_key = {(r.task, r.length, r.index, r.seed, r.column): r for r in records}
    for task, length, index, seed, answer in lost[: a.limit]:
        sample = plan_samples(task, model.tokenizer, length, meta["samples"], meta["seed"])[index]
        ids = model.encode(sample.prompt)
        base = model.config.replace(ctx=max(model.n_ctx, length))
        dense = dataclasses.replace(model, config=base)
        cfg = sparse_config(base, parse_mode(f"sparse@{budget}"), policy, len(ids))
        try:
            cfg = with_fields(cfg, **fields)
        except (ConfigError, TypeError) as e:
            print(f"error: --set {a.set!r} does not fit {a.column}: {e}", file=sys.stderr)
            return 2
        sparse = dataclasses.replace(model, config=cfg)
        reference = list(by_key[(task, length, index, seed, ref_col)].tokens)
        print(f"\n== {task} {length} #{index} (seed {seed}): lost {answer!r}; {ref_col} said "
              f"{model.tokenizer.decode(reference)!r}, {a.column} said "
              f"{by_key[(task, length, index, seed, a.column)].prediction!r}")
        pre = Prefilled.capture(dense, ids)
        try:
            step = divergence(dense, sparse, pre, reference)
            if step is None:
                print("fed the reference's answer, the sparse config picks every token of it (lost by a "
                      "near-tie in free decoding)")
                continue
            if step == 0:
                print("parts at the first token (the prefill's: exact) — a rounding tie, not selection")
                continue
            n_special = len(ids) - len(model.tokenizer(sample.prompt, add_special_tokens=False)["input_ids"])
            e = explain_step(sparse, pre, reference, step, source_span(model.tokenizer, sample, answer, n_special))
            print(format_explanation(e, model.tokenizer, a.top))
            for c, v in e.lost_by_cause().items():
                totals[c] = totals.get(c, 0.0) + v
        finally:
            pre.close()
    print("\nlost source mass by cause, all losses: "
          + ", ".join(f"{c} {v:.2f}" for c, v in sorted(totals.items(), key=lambda x: -x[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
