"""`BudgetPlan` (offload/sparse/budget_plan.py): the split at a step from the budget and the
statistics prefill observed per layer; frozen (observing makes a new plan); its state round-trips."""

import dataclasses
import math

import pytest
import torch

from offload.sparse.adaptive_budgets import adaptive_split, mass_curve
from offload.sparse.budget_plan import SPLITS, BudgetPlan
from offload.sparse.squeeze import layer_budgets
from offload.sparse.whole_layers import whole_layers


def test_uniform_tokens_or_a_fraction():
    assert SPLITS == ("uniform", "squeeze", "adaptive")
    assert BudgetPlan.empty(100, "uniform", 0.5, 4).uniform(10_000) == 100
    assert BudgetPlan.empty(0.1, "uniform", 0.5, 4).uniform(1001) == math.ceil(100.1)
    assert BudgetPlan.empty(0.001, "uniform", 0.5, 4).uniform(10) == 1  # at least one


def test_an_empty_plan_is_uniform_and_nothing_whole():
    for split in SPLITS:
        b = BudgetPlan.empty(64, split, 0.5, 3).at(1000)
        assert b.rows == ((64,), (64,), (64,)) and b.whole == frozenset()


def test_squeeze_after_every_layer_observed():
    plan = BudgetPlan.empty(100, "squeeze", 0.0, 4)
    cos = [0.99, 0.5, 0.98, 0.6]
    for layer, c in enumerate(cos[:3]):
        plan = plan.observed(layer, attn_cos=c)
        assert plan.at(1000).rows == ((100,),) * 4  # not every layer yet: uniform
    full = plan.observed(3, attn_cos=cos[3])
    assert plan.attn_cos[3] is None and full.attn_cos == tuple(cos)  # frozen: a new plan
    assert [r for (r,) in full.at(1000).rows] == layer_budgets(100, 4, "squeeze", cos)


def test_adaptive_and_whole_layers_follow_the_statistics():
    g = torch.Generator().manual_seed(0)
    curves = [mass_curve(torch.softmax(p * 4 * torch.randn(1, 2, 60, generator=g), -1) * 5, 4, 40, per_row=True)
              for p in (3.0, 0.1, 3.0, 3.0)]  # fmt: skip
    plan = BudgetPlan.empty(8, "adaptive", 0.5, 4)
    ceilings = [0.9, 0.2, 0.95, 0.8]
    for layer in range(4):
        plan = plan.observed(layer, curves=curves[layer], ceilings=ceilings[layer])
    at = plan.at(100)
    whole = whole_layers(ceilings, 0.5)
    rows, want_whole = adaptive_split(8, curves, whole, True)
    assert at.whole == frozenset(want_whole) and 1 in at.whole
    assert at.rows == tuple(tuple(r) for r in rows)
    assert BudgetPlan.empty(8, "uniform", 0.5, 4).observed(1, ceilings=0.2).at(100).whole == {1}
    assert BudgetPlan.empty(8, "uniform", 0.0, 4).observed(1, ceilings=0.2).at(100).whole == frozenset()


def test_state_round_trips():
    g = torch.Generator().manual_seed(1)
    plan = BudgetPlan.empty(0.25, "adaptive", 0.5, 3)
    for layer in range(3):
        curve = mass_curve(torch.softmax(torch.randn(1, 2, 50, generator=g), -1), 4, 30)
        plan = plan.observed(layer, curves=curve, ceilings=0.3 * layer, attn_cos=0.9 - 0.1 * layer)
    meta, tensors = plan.state()
    again = BudgetPlan.empty(0.25, "adaptive", 0.5, 3).restored(meta, tensors)
    assert again.ceilings == plan.ceilings and again.attn_cos == plan.attn_cos
    assert all(torch.equal(a, b) for a, b in zip(again.curves, plan.curves))
    assert again.at(400) == plan.at(400)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.budget = 3
