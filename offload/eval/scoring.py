"""RULER's scorers: case-insensitive containment of the references in the prediction.

string_match_all: the fraction of references found (niah, vt, cwe, fwe, passkey, multi_needle);
string_match_part: 1 if any reference is found (QA-style tasks with alternative answers).
Scores are in [0, 1] per sample; tables show the mean x 100 as RULER does.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["normalize_prediction", "found", "string_match_all", "string_match_part", "score", "METRICS"]

_CONTROL = re.compile(r"[\x00-\x1f]")


def normalize_prediction(text: str) -> str:
    """RULER's post-processing: control characters become line breaks, then strip."""
    return _CONTROL.sub("\n", text.strip()).strip()


def found(prediction: str, references: Sequence[str]) -> list[bool]:
    """For each reference: does it occur in `prediction`, ignoring case."""
    pred = normalize_prediction(prediction).lower()
    return [ref.lower() in pred for ref in references]


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of `references` that occur in `prediction`, ignoring case."""
    if not references:
        raise ValueError("no references to score against")
    return sum(found(prediction, references)) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 if any of `references` occurs in `prediction`, ignoring case, else 0.0."""
    if not references:
        raise ValueError("no references to score against")
    pred = normalize_prediction(prediction).lower()
    return float(any(ref.lower() in pred for ref in references))


METRICS = {"all": string_match_all, "part": string_match_part}


def score(prediction: str, references: Sequence[str], metric: str) -> float:
    """Score with the metric named by a Sample ("all" or "part")."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}") from None
    return fn(prediction, references)
