"""One score and kept-answer table over `offload-eval --json` runs of different policies on the same
samples (e.g. the default over 30 samples per family, the baselines over the first --limit of them).

    python bench/eval_compare.py --limit 10 RUN.json RUN.json [...]

Only the samples every run has (task, length, index, seed) are compared. The exact-attention
reference (`dense`) must have answered them identically in every run that has it (one prefill,
deterministic: a difference means the runs are not comparable and is an error); it is kept once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def common(docs: list[list[dict]], limit: int | None) -> list[dict]:
    """The records of `docs` on the samples all of them have (index < limit), dense once."""
    key = lambda r: (r["task"], r["length"], r["index"], r["seed"])  # noqa: E731
    shared = set.intersection(*({key(r) for r in d} for d in docs))
    if limit is not None:
        shared = {k for k in shared if k[2] < limit}
    out, dense = [], {}
    for d in docs:
        for r in d:
            if key(r) not in shared:
                continue
            if r["mode"] == "dense":
                seen = dense.setdefault(key(r), r)
                if seen is not r and list(seen["tokens"]) != list(r["tokens"]):
                    raise ValueError(f"dense answers differ between runs on {key(r)}: not the same samples")
                if seen is not r:
                    continue
            out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--limit", type=int, default=None, help="compare only each cell's first N samples")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from offload.eval.kept import format_kept
    from offload.eval.report import Record, format_table

    try:
        docs = []
        for path in args.runs:
            with open(path) as f:
                docs.append(json.load(f)["records"])
        records = [Record.from_json(r) for r in common(docs, args.limit)]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not records:
        print("error: the runs share no sample", file=sys.stderr)
        return 2
    print(format_table(records))
    print("\n" + format_kept(records))
    n = len({(r.task, r.length, r.index) for r in records})
    print(f"\n{n} samples common to {len(docs)} runs" + (f" (first {args.limit} per cell)" if args.limit else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
