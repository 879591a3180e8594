"""Sparse decode: which KV each layer attends to at a step. `SparseConfig` (the knobs), the policies
(`policies/`, one file each, found by the registry), the `BudgetPlan` (how the budget is split
over layers and rows) and the `Selector` (the mechanism a store runs them with)."""

from .config import SparseConfig
from .policies import make_policy, policy_classes, policy_names
from .policy import SelectionPolicy

__all__ = ["SparseConfig", "SelectionPolicy", "make_policy", "policy_classes", "policy_names"]
