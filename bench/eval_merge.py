"""Merge `offload-eval --json` files of one run split over processes (e.g. one per task and length,
as `bench/gpu_eval.sh` runs them) into one file, and print its score and kept-answer tables.

    python bench/eval_merge.py OUT.json PART.json [PART.json ...]

The parts must share the settings that decide an answer (seed, samples, caps, selection cadence,
chunk, dtype, device); their records are concatenated in (length, task, index) order, a repeated
answer is an error. OUT's meta is the first part's, with `parts` (each part's command, start, end and
seconds) and `finished` only when every part finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

SAME = ("seed", "samples", "max_new_tokens_cap", "select_every", "kv_chunk", "dtype", "device", "policy")


def merge(docs: list[dict]) -> dict:
    """One eval document of `docs` (ValueError when their settings differ or an answer repeats)."""
    if not docs:
        raise ValueError("nothing to merge")
    first = docs[0]["meta"]
    for d in docs[1:]:
        for name in SAME:
            if d["meta"].get(name) != first.get(name):
                raise ValueError(f"parts differ in {name}: {first.get(name)!r} vs {d['meta'].get(name)!r}")
    records, seen = [], set()
    for d in docs:
        for r in d["records"]:
            key = (r["task"], r["length"], r["mode"], r["policy"], r["index"], r["seed"])
            if key in seen:
                raise ValueError(f"answer {key} is in two parts")
            seen.add(key)
            records.append(r)
    records.sort(key=lambda r: (r["length"], r["task"], r["index"]))
    meta = dict(first)
    meta["tasks"] = list(dict.fromkeys(t for d in docs for t in d["meta"].get("tasks", [])))
    meta["lengths"] = sorted({n for d in docs for n in d["meta"].get("lengths", [])})
    meta["parts"] = [{k: d["meta"].get(k) for k in ("command", "started", "finished", "seconds")} for d in docs]
    meta["finished"] = max(p["finished"] for p in meta["parts"]) if all(p["finished"] for p in meta["parts"]) else None
    meta["seconds"] = max((p["seconds"] or 0) for p in meta["parts"])
    return {"meta": meta, "cells": [], "records": records}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("parts", nargs="+")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from offload.eval.kept import format_kept
    from offload.eval.report import Record, format_table, summarize

    docs = []
    for path in args.parts:
        try:
            with open(path) as f:
                docs.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
    try:
        doc = merge(docs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = [Record.from_json(r) for r in doc["records"]]
    doc["cells"] = [{"task": t, "length": n, "mode": m, "score": s, "n": k}
                    for (t, n, m), (s, k) in summarize(records).items()]
    fd, tmp = tempfile.mkstemp(prefix=".merge-", suffix=".json", dir=os.path.dirname(os.path.abspath(args.out)))
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, args.out)
    print(format_table(records))
    if any(r.mode == "dense" for r in records) and any(r.mode.startswith("sparse@") for r in records):
        print("\n" + format_kept(records))
    print(f"\n{len(records)} answers from {len(docs)} parts; machine {doc['meta'].get('machine')}, "
          f"{doc['meta'].get('dtype')}; finished: {doc['meta']['finished'] or 'no (cut at the deadline)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
