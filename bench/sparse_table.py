#!/usr/bin/env python
"""The sparse-decode eval table: sparse answers next to the full-attention answers of the same prompts.

Sparse runs (offload-eval --modes sparse@... --policy ... --limit N) and the full-attention table
(bench/results/eval-full-smollm2.json) are separate runs over the same deterministic prompts (same
--samples and --seed; --limit keeps the first N of them). This merges them — full answers only where
a sparse answer to the same prompt exists — writes the merged JSON, and prints one markdown table per
length: a row per policy@budget, a column per task (mean score x 100), then the mean, its ratio to
full's mean, and the share of answers token-for-token identical to full's.

    python bench/sparse_table.py --full bench/results/eval-full-smollm2.json \
        --sparse /tmp/runs/sparse4k.json /tmp/runs/sparse8k.json --out bench/results/eval-sparse-smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile


def _load(path: str) -> list:
    from offload.eval.runner import Record

    with open(path) as f:
        return [Record.from_json(r) for r in json.load(f)["records"]]


def _prompt(r) -> tuple:
    return (r.task, r.length, r.index, r.seed)


def markdown(records: list) -> str:
    """One table per length (see module doc)."""
    from offload.eval.modes import format_length

    full = {_prompt(r): r for r in records if r.mode == "full"}
    out = []
    for length in sorted({r.length for r in records}):
        rows = [r for r in records if r.length == length and r.mode != "full" and _prompt(r) in full]
        tasks = list(dict.fromkeys(r.task for r in rows))
        cols = list(dict.fromkeys(r.column for r in rows))
        n = len({_prompt(r) for r in rows}) // max(1, len(tasks))
        out.append(f"**{format_length(length)}** ({n} samples per task; scores = mean x 100)\n")
        out.append("| mode | " + " | ".join(tasks) + " | mean | x full | identical |")
        out.append("|---|" + "---:|" * (len(tasks) + 3))

        def mean(xs):
            return sum(xs) / len(xs) if xs else float("nan")

        per_task_full = {t: 100 * mean([full[_prompt(r)].score for r in rows if r.task == t and r.column == cols[0]])
                         for t in tasks}  # fmt: skip
        full_mean = mean(list(per_task_full.values()))
        out.append("| full | " + " | ".join(f"{per_task_full[t]:.1f}" for t in tasks) + f" | {full_mean:.1f} | 1.00 | 1.00 |")
        for c in cols:
            mine = [r for r in rows if r.column == c]
            per_task = [100 * mean([r.score for r in mine if r.task == t]) for t in tasks]
            m = mean(per_task)
            same = mean([float(r.tokens == full[_prompt(r)].tokens) for r in mine])
            ratio = f"{m / full_mean:.2f}" if full_mean else "-"
            out.append(f"| {c} | " + " | ".join(f"{s:.1f}" for s in per_task) + f" | {m:.1f} | {ratio} | {same:.2f} |")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", required=True, help="JSON of the full-attention run")
    ap.add_argument("--sparse", nargs="+", required=True, help="JSON files of sparse runs")
    ap.add_argument("--out", default=None, help="write the merged records here (atomically)")
    a = ap.parse_args()
    sparse = [r for p in a.sparse for r in _load(p) if r.mode != "full"]
    wanted = {_prompt(r) for r in sparse}
    full = [r for r in _load(a.full) if r.mode == "full" and _prompt(r) in wanted]
    records = full + sparse
    if a.out:
        folder = os.path.dirname(os.path.abspath(a.out))
        fd, tmp = tempfile.mkstemp(prefix=".sparse-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({"meta": {"full": a.full, "sparse": a.sparse}, "records": [r.to_json() for r in records]},
                      f, indent=1)
        os.replace(tmp, a.out)
    print(markdown(records))


if __name__ == "__main__":
    main()
