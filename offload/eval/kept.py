"""Kept answers: of the answers exact attention finds, how many a mode finds too.

A score ratio hides losses behind gains (a mode that loses one needle and guesses another scores the
same). The kept fraction counts answers: for each sample and each of its references (a needle's
value, one JSON field), the reference mode (`full`, else `dense`: both exact attention) either
finds it in its answer or not; of those it finds, `kept` is the fraction the mode also finds, and
`gained` counts what the mode finds that the reference did not. The interval is Wilson's score
interval at 95 % for that fraction (answers of one sample are not independent, so it is a little
narrow for multi-answer tasks). A 1-in-20 loss over 30 samples shows as kept 0.95 [0.8x, 0.99].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .modes import format_length
from .runner import Record
from .scoring import found

__all__ = ["Kept", "wilson", "reference_column", "kept_answers", "lost_answers", "format_kept"]

Z95 = 1.959964


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # at k = 0 / k = n the bound is exactly 0 / 1 (rounding would leave 1e-17 / 0.9999999999999999)
    return 0.0 if k == 0 else max(0.0, mid - half), 1.0 if k == n else min(1.0, mid + half)


@dataclass(frozen=True)
class Kept:
    """One column on one cell: `kept` of the `solved` answers the reference found; `gained`: answers
    only this column found; `samples`: samples compared."""

    solved: int
    kept: int
    gained: int
    samples: int

    @property
    def fraction(self) -> float | None:
        return self.kept / self.solved if self.solved else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.kept, self.solved)

    def __add__(self, other: "Kept") -> "Kept":
        return Kept(self.solved + other.solved, self.kept + other.kept, self.gained + other.gained,
                    self.samples + other.samples)


def reference_column(records: Sequence[Record]) -> str:
    """`full` when the records have it, else `dense`; an error when neither ran."""
    columns = {r.column for r in records}
    for ref in ("full", "dense"):
        if ref in columns:
            return ref
    raise ValueError("kept answers need a full or dense run beside the modes")


def _hits(records: Sequence[Record]) -> dict[tuple, dict[str, list[bool]]]:
    """(task, length, index, seed) -> column -> found per reference."""
    out: dict[tuple, dict[str, list[bool]]] = {}
    for r in records:
        out.setdefault((r.task, r.length, r.index, r.seed), {})[r.column] = found(r.prediction, r.references)
    return out


def kept_answers(records: Sequence[Record], reference: str | None = None) -> dict[tuple[str, int, str], Kept]:
    """(task, length, column) -> Kept against `reference` (default `reference_column`), over the
    samples both ran."""
    reference = reference or reference_column(records)
    out: dict[tuple[str, int, str], Kept] = {}
    for (task, length, _, _), cols in _hits(records).items():
        ref = cols.get(reference)
        if ref is None:
            continue
        for column, hits in cols.items():
            if column == reference:
                continue
            k = Kept(sum(ref), sum(a and b for a, b in zip(ref, hits)),
                     sum(b and not a for a, b in zip(ref, hits)), 1)
            key = (task, length, column)
            out[key] = out[key] + k if key in out else k
    return out


def lost_answers(records: Sequence[Record], column: str, reference: str | None = None) -> list[tuple]:
    """(task, length, index, seed, reference answer) the reference found and `column` did not."""
    reference = reference or reference_column(records)
    lost = []
    by_key = {(r.task, r.length, r.index, r.seed, r.column): r for r in records}
    for (task, length, index, seed), cols in _hits(records).items():
        if reference in cols and column in cols:
            refs = by_key[(task, length, index, seed, reference)].references
            lost += [(task, length, index, seed, a) for a, x, y in zip(refs, cols[reference], cols[column])
                     if x and not y]
    return lost


def _cell(k: Kept | None) -> str:
    if k is None or k.fraction is None:
        return "-"
    lo, hi = k.interval
    gained = f" +{k.gained}" if k.gained else ""
    return f"{k.kept}/{k.solved} {k.fraction:.2f} [{lo:.2f},{hi:.2f}]{gained}"


def format_kept(records: Sequence[Record], reference: str | None = None) -> str:
    """One row per (task, length) and a pooled `all` row per length; one column per mode: kept/solved,
    the fraction, its 95 % interval, and +gained when the mode found answers the reference missed."""
    reference = reference or reference_column(records)
    cells = kept_answers(records, reference)
    tasks = list(dict.fromkeys(r.task for r in records))
    columns = [c for c in dict.fromkeys(r.column for r in records) if c not in ("full", "dense")]
    head = ["task", "length", "n"] + columns
    rows = []
    for length in sorted({r.length for r in records}):
        pooled: dict[str, Kept] = {}
        for task in tasks:
            present = [cells.get((task, length, c)) for c in columns]
            if not any(present):
                continue
            n = max(k.samples for k in present if k)
            rows.append([task, format_length(length), str(n)] + [_cell(k) for k in present])
            for c, k in zip(columns, present):
                if k is not None:
                    pooled[c] = pooled[c] + k if c in pooled else k
        if pooled:
            n = max(k.samples for k in pooled.values())
            rows.append(["all", format_length(length), str(n)] + [_cell(pooled.get(c)) for c in columns])
    if not rows:
        return f"(no samples with both {reference} and another mode)"
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([f"kept answers vs {reference}: kept/solved, fraction, 95 % Wilson interval, +gained",
                      fmt(head), *map(fmt, rows)])
