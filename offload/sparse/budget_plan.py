"""`BudgetPlan`: how a sparse store's budget is split, the single writer of those facts.

From the budget (tokens, or a fraction of the context) and the statistics prefill measured per
layer — the recall curves of the prompt's last queries (`adaptive`), the ceiling of any selection
(whole layers), cos(h, h + attn(h)) (`squeeze`) — `at(n_tokens)` gives every layer's budget in
tokens (one per row — KV head — when an adaptive split of token selections is per row) and the
layers read whole. Frozen: each layer's observation at prefill makes a new plan
(`observed`); a session saves the statistics (`state`) and a reopened store rebuilds the same plan,
so it decodes as the original did. Until every layer has a curve, `adaptive` splits uniformly.
`at` reads no tensor value: the curves' host copies (`host_curves`) are made with the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .adaptive_budgets import adaptive_split
from .squeeze import layer_budgets
from .whole_layers import whole_layers

__all__ = ["BudgetPlan", "Budgets", "SPLITS"]

SPLITS = ("uniform", "squeeze", "adaptive")


@dataclass(frozen=True)
class Budgets:
    """rows[layer]: budget in tokens of each row of the layer (one entry = every row alike);
    whole: layers read whole (while their chunks fit their GPU slots)."""

    rows: tuple[tuple[int, ...], ...]
    whole: frozenset[int]


@dataclass(frozen=True)
class BudgetPlan:
    """budget: tokens (int) or a fraction of the context; split: SPLITS; whole_below: see
    SparseConfig. Statistics per layer
    (None until observed): ceilings, curves ([1 + U, P] fp32 CPU, `mass_curve`), attn_cos."""

    budget: int | float
    split: str
    whole_below: float
    ceilings: tuple[float | None, ...]
    curves: tuple[torch.Tensor | None, ...]
    attn_cos: tuple[float | None, ...]
    host_curves: tuple = field(init=False, repr=False, compare=False)  # numpy copies of curves

    def __post_init__(self):  # made where statistics arrive (prefill, a reopened session), never in a step
        host = tuple(None if c is None else c.detach().float().numpy() for c in self.curves)
        object.__setattr__(self, "host_curves", host)

    @classmethod
    def empty(cls, budget, split: str, whole_below: float, n_layers: int) -> "BudgetPlan":
        none = (None,) * n_layers
        return cls(budget, split, whole_below, none, none, none)

    def uniform(self, n_tokens: int) -> int:
        """Every layer's budget in tokens at a step over n_tokens, before the split."""
        b = self.budget
        return b if isinstance(b, int) else max(1, math.ceil(b * n_tokens))

    def at(self, n_tokens: int) -> Budgets:
        """The split at a step over n_tokens tokens."""
        tokens = self.uniform(n_tokens)
        n = len(self.ceilings)
        whole = whole_layers(list(self.ceilings), self.whole_below)
        if self.split == "adaptive":
            rows = [[tokens] for _ in range(n)]
            if all(c is not None for c in self.host_curves):  # whole: also the layers too wide to select
                rows, whole = adaptive_split(tokens, list(self.host_curves), whole, self.whole_below > 0)
        else:
            stats = list(self.attn_cos) if all(c is not None for c in self.attn_cos) else None
            rows = [[b] for b in layer_budgets(tokens, n, self.split, stats)]
        return Budgets(tuple(tuple(r) for r in rows), frozenset(whole))

    def observed(self, layer: int, **stats) -> "BudgetPlan":
        """A plan with layer's `ceilings` / `curves` / `attn_cos` replaced by the given values."""
        changes = {}
        for name, value in stats.items():
            seq = list(getattr(self, name))
            seq[layer] = value
            changes[name] = tuple(seq)
        return replace(self, **changes)

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able scalars, tensors) to save; `restored` reads them back."""
        meta = {"ceilings": list(self.ceilings), "attn_cos": list(self.attn_cos)}
        tensors = {f"curve.{i}": c for i, c in enumerate(self.curves) if c is not None}
        return meta, tensors

    def restored(self, meta: dict, tensors: dict[str, torch.Tensor]) -> "BudgetPlan":
        """This plan with the statistics of `state()` (same layer count, checked by the caller)."""
        n = len(self.ceilings)
        curves = tuple(tensors.get(f"curve.{i}") for i in range(n))
        return replace(self, ceilings=tuple(meta["ceilings"]), attn_cos=tuple(meta["attn_cos"]),
                       curves=tuple(None if c is None else c.float() for c in curves))  # fmt: skip
