"""Parsing what to run: lengths (`1k` = 1024 tokens, RULER's sizes) and modes.

Modes: `full` (stock transformers forward + greedy decode: the reference), `dense` (offload with every
KV entry attended: must equal `full`), `sparse@B` (offload with sparse selection under budget B: a
fraction of the context like `1/16` or `0.0625`, or a token count like `256` / `2k`, with a named
selection policy). `sparse_config` maps a sparse mode onto an `OffloadConfig`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from ..config import OffloadConfig, SparseConfig
from ..sparse.budget_plan import SPLITS
from ..errors import ConfigError
from .errors import EvalError

__all__ = [
    "Mode",
    "parse_length",
    "parse_lengths",
    "unique_list",
    "format_length",
    "parse_budget",
    "parse_mode",
    "parse_modes",
    "sparse_config",
    "split_policy",
    "policy_rest",
]

_LENGTH = re.compile(r"^(\d+)([kK]?)$")
_MODE_KINDS = ("full", "dense", "sparse")


def parse_length(text: str) -> int:
    """`1k` / `1K` = 1024 tokens (eval sizes are RULER's powers of two), plain integers as is."""
    m = _LENGTH.match(str(text).strip())
    if not m or int(m.group(1)) <= 0:
        raise EvalError(f"{text!r} is not a length (examples: 1k, 8k, 1500)")
    return int(m.group(1)) * (1024 if m.group(2) else 1)


def unique_list(parse, text: str, what: str) -> list:
    """A comma list parsed item by item, in the order given, duplicates dropped."""
    out: list = []
    for part in _parts(text, what):
        item = parse(part)
        if item not in out:
            out.append(item)
    return out


def parse_lengths(text: str) -> list[int]:
    """A comma list of lengths, in the order given, duplicates dropped."""
    return unique_list(parse_length, text, "lengths")


def format_length(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def parse_budget(text: str) -> Fraction | int:
    """A fraction of the context (`1/16`, `0.0625`; in (0, 1]) or a token count (`256`, `2k`)."""
    t = str(text).strip()
    bad = EvalError(f"{t!r} is not a budget (a fraction like 1/16 or 0.0625, or tokens like 512)")
    if "/" in t or "." in t:
        try:
            frac = Fraction(t)
        except (ValueError, ZeroDivisionError):
            raise bad from None
        if not 0 < frac <= 1:
            raise EvalError(f"budget fraction {t!r} must be in (0, 1]")
        return frac
    try:
        return parse_length(t)
    except EvalError:
        raise bad from None


@dataclass(frozen=True)
class Mode:
    """kind: full | dense | sparse. budget: for sparse, a Fraction of the context or a token count."""

    kind: str
    budget: Fraction | int | None = None

    @property
    def label(self) -> str:
        if self.kind != "sparse":
            return self.kind
        b = self.budget
        return f"sparse@{b}" if isinstance(b, Fraction) else f"sparse@{format_length(b)}"

    def budget_tokens(self, n_context: int) -> int:
        """Tokens a layer may attend to beyond sinks + window, for a context of n_context tokens."""
        if isinstance(self.budget, Fraction):
            return max(1, math.ceil(self.budget * n_context))
        return int(self.budget)


def parse_mode(text: str) -> Mode:
    t = str(text).strip()
    if t in ("full", "dense"):
        return Mode(t)
    if t.startswith("sparse@"):
        return Mode("sparse", parse_budget(t[len("sparse@"):]))
    raise EvalError(f"unknown mode {t!r}; modes are full, dense and sparse@B (B = 1/16, 0.0625 or 512)")


def parse_modes(text: str) -> list[Mode]:
    """A comma list of modes, in the order given, duplicates dropped."""
    return unique_list(parse_mode, text, "modes")


def _parts(text: str, what: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise EvalError(f"{what} must be a comma-separated list without empty items, got {text!r}")
    return parts


def _policy_parts(spec: str) -> tuple[str, str, str | None]:
    """NAME[+SPLIT][/REST], the two suffixes in either order -> (name, split or "", rest or None)."""
    head, slash, tail = str(spec).partition("/")
    rest, plus, after = tail.partition("+")
    name, _, split = (head + plus + after).partition("+")
    return name, split, rest if slash else None


def split_policy(spec: str) -> tuple[str, str]:
    """`quest` -> ("quest", SparseConfig's default split: "adaptive"); `quest+uniform` ->
    ("quest", "uniform"). A `/REST` suffix (`policy_rest`) is left out."""
    name, split, _ = _policy_parts(spec)
    return name, split or SparseConfig.split


def policy_rest(spec: str) -> str | None:
    """The rest a policy spec asks for: `quest/none` -> "none" (drop what is not selected, as
    published), `token+uniform/k8v4` -> "k8v4"; None when the spec names none (SparseConfig's default)."""
    return _policy_parts(spec)[2]


def sparse_config(base: OffloadConfig, mode: Mode, policy: str | None, n_context: int,
                  select_every: int = 1) -> OffloadConfig:  # fmt: skip
    """The config offload runs a sparse mode with: `base` plus a `SparseConfig` of the budget
    (tokens), the selection policy, its split over layers and its rest; policy is `NAME`,
    `NAME+SPLIT` (`split_policy`), either with `/REST` (`policy_rest`). SparseConfig validates."""
    if mode.kind != "sparse":
        raise EvalError(f"mode {mode.label!r} is not a sparse mode")
    if not policy:
        raise EvalError(f"mode {mode.label} needs a selection policy (--policy NAME)")
    name, split = split_policy(policy)
    if split not in SPLITS:
        raise EvalError(f"unknown split {split!r} (policy NAME+SPLIT, SPLIT one of {', '.join(SPLITS)})")
    rest = policy_rest(policy)
    try:
        sparse = SparseConfig(budget=mode.budget_tokens(n_context), policy=name, split=split,
                              select_every=select_every, **({} if rest is None else {"rest": rest}))  # fmt: skip
        return base.replace(sparse=sparse)
    except (ConfigError, TypeError) as e:
        raise EvalError(f"{mode.label} with policy {policy!r}: {e}") from None
