"""Results: the per-cell summary, the printed table and the JSON file (rewritten after every answer,
so an interrupted run keeps what finished)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Sequence

from .modes import format_length
from .runner import Record

__all__ = ["summarize", "format_table", "format_vs_full", "JsonWriter"]


def summarize(records: Sequence[Record]) -> dict[tuple[str, int, str], tuple[float, int]]:
    """(task, length, column) -> (mean score x 100, number of samples); column: `Record.column`."""
    acc: dict[tuple[str, int, str], list[float]] = {}
    for r in records:
        acc.setdefault((r.task, r.length, r.column), []).append(r.score)
    return {k: (100.0 * sum(v) / len(v), len(v)) for k, v in acc.items()}


def _ratio(score: float, full: float | None) -> str:
    if full is None:
        return "-"
    if full == 0:
        return "-" if score == 0 else "inf"
    return f"{score / full:.2f}"


def format_table(records: Sequence[Record]) -> str:
    """One row per (task, length), one column per mode (score = mean x 100, RULER-style); every mode
    other than full also gets its ratio to full. A mean row per length closes each length's block."""
    cells = summarize(records)
    tasks = list(dict.fromkeys(r.task for r in records))
    lengths = sorted({r.length for r in records})
    modes = list(dict.fromkeys(r.column for r in records))
    has_full = "full" in modes
    head = ["task", "length", "n"]
    for m in modes:
        head += [m] + (["x full"] if has_full and m != "full" else [])
    rows = []
    for length in lengths:
        sums = {m: [] for m in modes}
        for task in tasks:
            present = [cells.get((task, length, m)) for m in modes]
            if not any(present):
                continue
            n = max(c[1] for c in present if c)
            row = [task, format_length(length), str(n)]
            full = cells.get((task, length, "full"), (None,))[0]
            for m, c in zip(modes, present):
                s = None if c is None else c[0]
                row.append("" if s is None else f"{s:.1f}")
                if has_full and m != "full":
                    row.append("" if s is None else _ratio(s, full))
                if s is not None:
                    sums[m].append(s)
            rows.append(row)
        row = ["mean", format_length(length), ""]
        full_mean = sum(sums["full"]) / len(sums["full"]) if has_full and sums["full"] else None
        for m in modes:
            mean = sum(sums[m]) / len(sums[m]) if sums[m] else None
            row.append("" if mean is None else f"{mean:.1f}")
            if has_full and m != "full":
                row.append("" if mean is None else _ratio(mean, full_mean))
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(  # noqa: E731
        (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths))
    )
    out = [fmt(head), fmt(["-" * w for w in widths])]
    for r in rows:
        out.append(fmt(r))
        if r[0] == "mean":
            out.append("")
    return "\n".join(out).rstrip()


def format_vs_full(records: Sequence[Record]) -> str:
    """Per length and column other than full: answers compared with full's answer to the same prompt,
    the share that is token-for-token identical, and the mean score over those answers vs full's
    (a score ratio hides answers that differ but score alike; identity does not)."""
    full = {(r.task, r.length, r.index, r.seed): r for r in records if r.mode == "full"}
    acc: dict[tuple[int, str], list[tuple[bool, float, float]]] = {}
    for r in records:
        ref = full.get((r.task, r.length, r.index, r.seed))
        if r.mode != "full" and ref is not None:
            acc.setdefault((r.length, r.column), []).append((r.tokens == ref.tokens, r.score, ref.score))
    if not acc:
        return "(no answers to compare with full)"
    head = ("length", "mode", "n", "identical", "score", "full", "x full")
    lines = ["{:>6}  {:<24} {:>4}  {:>9}  {:>6}  {:>6}  {:>6}".format(*head)]
    for (length, col), rows in sorted(acc.items()):
        n = len(rows)
        same = sum(a for a, _, _ in rows) / n
        s, f = 100 * sum(b for _, b, _ in rows) / n, 100 * sum(c for _, _, c in rows) / n
        lines.append(f"{format_length(length):>6}  {col:<24} {n:>4}  {same:>9.2f}  {s:>6.1f}  {f:>6.1f}  "
                     f"{_ratio(s, f):>6}")
    return "\n".join(lines)


class JsonWriter:
    """Keeps `path` a complete JSON document: {"meta", "cells", "records"}, rewritten atomically."""

    def __init__(self, path: str, meta: dict):
        self.path, self.meta, self.records = path, dict(meta), []

    def __call__(self, record: Record) -> None:
        self.records.append(record)
        self.write()

    def write(self, **extra_meta) -> None:
        self.meta.update(extra_meta)
        cells = [
            {"task": t, "length": L, "mode": m, "score": s, "n": n}
            for (t, L, m), (s, n) in summarize(self.records).items()
        ]
        doc = {"meta": self.meta, "cells": cells, "records": [r.to_json() for r in self.records]}
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".eval-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
