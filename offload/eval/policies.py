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

Baselines here: `full` (everything: recall 1.0 by construction, a sanity check) and `window` (sinks +
a recent window grown by the budget, StreamingLLM-style); the runtime's policies (`offload.sparse`:
`token`, `bound`, `quest`, ...) come from its registry through `sparse_policies.py`.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = [
    "SelectionPolicy",
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


def policy_names() -> list[str]:
    """Every name the harness takes: its baselines, the runtime's policies (`offload.sparse`, the one
    registry) and the measurement-only ones (`sparse_policies.EXTRA`)."""
    from ..sparse import policy_names as runtime_names
    from .sparse_policies import EXTRA

    return sorted({*_BASELINES, *runtime_names(), *EXTRA})


def get_policy(name: str, *, sinks: int = 4, window: int = 64) -> SelectionPolicy:
    """An instance of the policy `name`; ValueError naming the known ones otherwise."""
    from .sparse_policies import store_policy

    if name in _BASELINES:
        return _BASELINES[name](sinks=sinks, window=window)
    policy = store_policy(name, sinks=sinks, window=window)
    if policy is None:
        raise ValueError(f"unknown selection policy {name!r}; known: {', '.join(policy_names())}")
    return policy


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


_BASELINES = {"full": FullPolicy, "window": WindowPolicy}
