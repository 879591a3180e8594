"""Selection policies for the attention-recall measurement, and their registry.

A policy decides, at one decode step of one layer, which context tokens the sparse attention reads:

    policy.select(layer, query, keys, budget) -> selection
        query:  [H, D]       the step's post-RoPE query, every query head
        keys:   [Hkv, T, D]  post-RoPE keys of every token the step can see (itself last)
        budget: int          tokens to pick per KV head *beyond* the always-kept sinks and window
        selection: bool mask [Hkv, T] or [T], or token indices [Hkv, k] or [k]

The harness always adds the first `sinks` and last `window` tokens (the policy gets both at
construction, so it can avoid spending budget on them) and checks that at most `budget` further tokens
were picked per KV head, unless the policy sets `respects_budget = False` (only `full` does).

Register a policy with `@register_policy("name")` on a factory `f(sinks=..., window=...) -> policy`.
Baselines here: `full` (everything: recall 1.0 by construction, a sanity check) and `window` (sinks +
a recent window grown by the budget, StreamingLLM-style). The sparse-decode work registers
`bound`, `quest`, `landmark`, ... from its own modules.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

__all__ = [
    "SelectionPolicy",
    "register_policy",
    "get_policy",
    "policy_names",
    "selection_mask",
    "FullPolicy",
    "WindowPolicy",
]


class SelectionPolicy(Protocol):
    name: str
    respects_budget: bool

    def select(self, layer: int, query: torch.Tensor, keys: torch.Tensor, budget: int) -> torch.Tensor: ...


# The registry is the one piece of module state: a name table, like transformers' AttentionInterface.
_REGISTRY: dict[str, Callable[..., SelectionPolicy]] = {}


def register_policy(name: str):
    """Decorator: register `factory(sinks=int, window=int) -> SelectionPolicy` under `name`."""

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a selection policy named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_policy(name: str, *, sinks: int = 4, window: int = 64) -> SelectionPolicy:
    """An instance of the registered policy `name`; ValueError naming the known ones otherwise."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown selection policy {name!r}; known: {', '.join(policy_names())}") from None
    return factory(sinks=sinks, window=window)


def fixed_mask(n_kv: int, n_tokens: int, sinks: int, window: int, device=None) -> torch.Tensor:
    """[Hkv, T] bool: the sinks and the recent window, always kept."""
    mask = torch.zeros(n_kv, n_tokens, dtype=torch.bool, device=device)
    mask[:, :sinks] = True
    if window:
        mask[:, max(0, n_tokens - window):] = True
    return mask


def selection_mask(selection: torch.Tensor, n_kv: int, n_tokens: int) -> torch.Tensor:
    """Normalize a policy's answer to a [Hkv, T] bool mask."""
    sel = torch.as_tensor(selection)
    if sel.dtype == torch.bool:
        if sel.shape == (n_tokens,):
            return sel.unsqueeze(0).expand(n_kv, n_tokens).clone()
        if sel.shape == (n_kv, n_tokens):
            return sel.clone()
        raise ValueError(
            f"a selection mask must be [T] or [Hkv, T] = {(n_kv, n_tokens)}, got {tuple(sel.shape)}"
        )
    idx = sel.long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= n_tokens):
        raise ValueError(f"selected token index out of range [0, {n_tokens})")
    mask = torch.zeros(n_kv, n_tokens, dtype=torch.bool, device=idx.device)
    if idx.dim() == 1:
        mask[:, idx] = True
    elif idx.dim() == 2 and idx.shape[0] == n_kv:
        mask.scatter_(1, idx, True)
    else:
        raise ValueError(f"selected indices must be [k] or [Hkv, k], got {tuple(idx.shape)}")
    return mask


class FullPolicy:
    """Every token: the exact attention. Recall is 1.0 by construction."""

    name = "full"
    respects_budget = False

    def __init__(self, sinks: int = 4, window: int = 64):
        self.sinks, self.window = sinks, window

    def select(self, layer, query, keys, budget):
        return torch.ones(keys.shape[1], dtype=torch.bool, device=keys.device)


class WindowPolicy:
    """StreamingLLM: attention sinks plus the most recent tokens; the budget extends the window, so
    it reads as many tokens as any other policy at the same budget, and ignores the query."""

    name = "window"
    respects_budget = True

    def __init__(self, sinks: int = 4, window: int = 64):
        self.sinks, self.window = sinks, window

    def select(self, layer, query, keys, budget):
        n = keys.shape[1]
        end = max(self.sinks, n - self.window)  # tokens before the always-kept window
        start = max(self.sinks, end - budget)
        return torch.arange(start, end, device=keys.device)


register_policy("full")(FullPolicy)
register_policy("window")(WindowPolicy)

# sparse decode's chunk policies (bound, quest, landmark, snapkv, h2o) register themselves
from . import sparse_policies  # noqa: E402,F401
