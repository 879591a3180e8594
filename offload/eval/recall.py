"""Attention recall: how much of the exact attention mass a selection policy keeps, per layer.

On a natural-text prompt of n_context tokens, the next n_steps tokens of the same text are fed as
decode steps (teacher forcing: real text, not the small model's own loops). One full-attention forward
of the stock transformers model captures every layer's post-RoPE queries of those steps and all keys;
then for each step and layer the exact softmax over the visible tokens is compared with each policy's
selection (plus sinks and window): recall = attention mass inside the selection, averaged over query
heads and steps. This isolates selection quality from the model's ability to answer.

Whole layers (`whole_below`, as the store's `Selector`): a chunk policy reads whole the layers where
no choice of its chunks at the budget could keep `whole_below` of the attention — measured, as the
harness's snapkv observes, on the first step's query (the store: the prompt's last 32 queries) — at
most max(1, L // 8) of them, the lowest first. There recall is 1 and every token is read.

`policy+adaptive` splits the budget over layers as the store's `adaptive` layer budgets do
(offload/sparse/adaptive_budgets.py): from the attention of the prompt's last `OBS_WINDOW` queries (captured
with the steps), whole layers apart — with those the split would give a quarter of their body — the
total unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch

from ..kernels.dispatch import causal_prefill_attention
from ..sparse.adaptive_budgets import adaptive_split, mass_curve
from ..sparse.prefill_stats import OBS_TAIL as OBS_WINDOW
from ..tiers.layout import ChunkLayout
from ..chat_format import lead_ids
from .corpus import natural_sentences
from .policies import fixed_mask, get_policy, selection_mask
from .sample import make_rng

__all__ = ["RecallResult", "natural_ids", "capture_qk", "attention_recall", "format_recall_table",
           "split_name", "LAYER_SPLITS"]

LAYER_SPLITS = ("adaptive",)  # `policy+split` names the recall harness takes


def split_name(name: str) -> tuple[str, str | None]:
    """"token+adaptive" -> ("token", "adaptive"); ValueError for an unknown split."""
    base, plus, split = name.partition("+")
    if plus and split not in LAYER_SPLITS:
        raise ValueError(f"{name!r}: the recall harness splits budgets over layers only by "
                         f"{', '.join(LAYER_SPLITS)}")
    return base, split or None

CAPTURE_ATTN = "offload_eval_capture"


@dataclass(frozen=True)
class RecallResult:
    """policy at one budget. per_layer: mean recall per layer; read: mean tokens read per KV head and
    step (sinks + window + selection)."""

    policy: str
    budget: str
    budget_tokens: int
    n_context: int
    n_steps: int
    per_layer: tuple[float, ...]
    read: float
    layers: tuple[int, ...] = ()  # the model layer of each per_layer entry (global layers only on Gemma 3)

    @property
    def mean(self) -> float:
        return sum(self.per_layer) / len(self.per_layer)

    @property
    def label(self) -> str:
        return f"{self.policy}@{self.budget}"


def natural_ids(tokenizer, n_tokens: int, seed=0) -> list[int]:
    """n_tokens of prose from the stdlib-docstring corpus, from a seeded start (raw text, no template),
    after the tokenizer's own start tokens (Gemma's <bos>; none for SmolLM2), which count in n_tokens."""
    lead = lead_ids(tokenizer)
    sentences = natural_sentences()
    start = make_rng("recall", n_tokens, seed).randrange(len(sentences))
    text, i = "", 0
    while True:
        chunk = " ".join(sentences[(start + i + j) % len(sentences)] for j in range(200))
        text = f"{text} {chunk}" if text else chunk
        i += 200
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            return (lead + list(ids))[:n_tokens]


@torch.inference_mode()
def capture_qk(hf_model, ids: Sequence[int], n_query: int):
    """One causal forward of `hf_model` over `ids`. Returns ({layer: (q [H, n_query, D] of the last
    n_query positions, k [Hkv, T, D], scaling)}, last position's logits [V]); q and k post-RoPE, as
    the attention sees them, in fp32.

    The model's attention implementation is switched to a capturing twin of sdpa for this call only."""
    from transformers import AttentionInterface

    captured: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def capture(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                sliding_window=None, **kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        if sliding_window is not None:  # nothing to select on a sliding-window layer: exact, not captured
            return _sliding_attention(query, key, value, scale, sliding_window), None
        groups = query.shape[1] // key.shape[1]
        captured[module.layer_idx] = (query[0, :, -n_query:].float().clone(), key[0].float().clone(), scale)
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1),
            is_causal=True, scale=scale,
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(CAPTURE_ATTN, capture)
    previous = hf_model.config._attn_implementation
    hf_model.set_attn_implementation(CAPTURE_ATTN)
    try:
        input_ids = torch.tensor([list(ids)], device=hf_model.device)
        logits = hf_model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[0, -1]
    finally:
        hf_model.set_attn_implementation(previous)
    return captured, logits


def _sliding_attention(q, k, v, scale: float, window: int, block: int = 1024) -> torch.Tensor:
    """Causal sliding-window attention of a whole prompt, a block of queries at a time over the keys
    its window reaches (no [T x T] mask at 32k tokens). q [1, H, T, D], k, v [1, Hkv, T, D]."""
    t = q.shape[2]
    outs = []
    for s in range(0, t, block):
        e = min(s + block, t)
        lo = max(0, s - window + 1)
        outs.append(causal_prefill_attention(q[:, :, s:e], k[:, :, lo:e], v[:, :, lo:e], scale, window))
    return torch.cat(outs, dim=1)


def _budget_tokens(budget, n_context: int) -> int:
    if isinstance(budget, Fraction):
        return max(1, math.ceil(budget * n_context))
    return int(budget)


@torch.inference_mode()
def attention_recall(
    hf_model,
    tokenizer,
    policies: Sequence[str],
    budgets: Sequence[Fraction | int],
    *,
    n_context: int = 4096,
    n_steps: int = 16,
    sinks: int = 4,
    window: int = 64,
    seed=0,
    select_every: int = 1,
    whole_below: float = 0.5,
) -> list[RecallResult]:
    """Recall of each policy (a name, `policies.policy_names`, or an object with `select`) at each
    budget (a Fraction of n_context or a token count).

    select_every > 1: a policy's selection is kept for that many steps (as the store keeps it,
    `OffloadConfig.select_every`) and made afresh when a chunk leaves the window; a kept selection
    is scored on later queries, with the sinks + window of their own step. Stateful policies (h2o)
    then see only the queries they select for."""
    ids = natural_ids(tokenizer, n_context + n_steps, seed)
    obs = OBS_WINDOW  # the prompt's last queries, before the steps: what `adaptive` splits by
    captured, _ = capture_qk(hf_model, ids, n_steps + obs)
    layers = sorted(captured)
    names = [split_name(name) if isinstance(name, str) else (name, None) for name in policies]
    insts = [(get_policy(base, sinks=sinks, window=window) if isinstance(base, str) else base, split)
             for base, split in names]  # fmt: skip
    combos = [(p, b, _budget_tokens(b, n_context), split) for p, split in insts for b in budgets]
    layouts = [ChunkLayout(1, 1, getattr(p, "chunk", 1), 1, torch.float32, sinks, window) for p, *_ in combos]
    sums = torch.zeros(len(combos), len(layers), dtype=torch.float64)
    read = torch.zeros(len(combos), dtype=torch.float64)
    kept: dict[tuple[int, int], tuple] = {}  # (combo, layer) -> (mask, body chunks, step)
    first = _first_step_mass(captured, n_context, obs) if whole_below > 0 else {}
    whole = [_whole_layers(first, n_context, p, b, whole_below) for p, _, b, _ in combos]
    curves = {}
    per_layer = []  # [combo][layer index]: the layer's budget in tokens
    for ci, (p, _, b, split) in enumerate(combos):
        if split is None:
            per_layer.append([[b]] * len(layers))
            continue
        # a policy that picks single tokens (a "chunk" of 1, as the store's `token`) splits per KV head
        key = (getattr(p, "chunk", 1), p.sinks, p.window, getattr(p, "chunk", None) == 1)
        if key not in curves:
            curves[key] = [_prompt_curve(captured[layer], n_context, obs, *key) for layer in layers]
        split, whole[ci] = adaptive_split(b, curves[key], whole[ci], whole_below > 0)  # as the store's
        per_layer.append(split)  # per KV head when single tokens
    for li, layer in enumerate(layers):
        q, k, scaling = captured[layer]  # q [H, obs + n, D]; k [Hkv, T, D]
        n_kv = k.shape[0]
        groups = q.shape[0] // n_kv
        for j in range(n_steps):
            t = n_context + j + 1  # tokens visible to this step, itself included
            keys, query = k[:, :t], q[:, obs + j]
            probs = torch.softmax(
                torch.einsum("hd,htd->ht", query, keys.repeat_interleave(groups, 0)) * scaling, dim=-1
            )  # [H, t]
            fixed = fixed_mask(n_kv, t, sinks, window, device=keys.device)
            for ci, (policy, *_) in enumerate(combos):
                budget = per_layer[ci][li]  # [tokens], or tokens per KV head
                allowed = torch.tensor(budget * (n_kv if len(budget) == 1 else 1))
                budget = budget[0] if len(budget) == 1 else budget
                if layer in whole[ci]:  # every token read: all the mass kept
                    sums[ci, li] += 1.0
                    read[ci] += t
                    continue
                body = layouts[ci].body_chunks(t)  # chunks past the window
                held = kept.get((ci, layer))
                if held is None or held[1] != body or j - held[2] >= select_every:
                    held = (selection_mask(policy.select(layer, query, keys, budget), n_kv, t), body, j)
                    kept[(ci, layer)] = held
                sel = torch.nn.functional.pad(held[0], (0, t - held[0].shape[1]))  # [Hkv, t]
                extra = (sel & ~fixed).sum(-1)  # [Hkv]
                if policy.respects_budget and bool((extra > allowed).any()):
                    raise ValueError(
                        f"policy {policy.name!r} picked {extra.tolist()} tokens beyond sinks+window at "
                        f"layer {layer}, over its budget of {allowed.tolist()}"
                    )
                keep = (sel | fixed).repeat_interleave(groups, 0)
                sums[ci, li] += float((probs * keep).sum(-1).mean())
                read[ci] += float((sel | fixed).sum(-1).float().mean())
    out = []
    for ci, (policy, budget, tokens, split) in enumerate(combos):
        out.append(RecallResult(
            policy=policy.name + (f"+{split}" if split else ""), budget=str(budget), budget_tokens=tokens,
            n_context=n_context, n_steps=n_steps, per_layer=tuple((sums[ci] / n_steps).tolist()),
            read=float(read[ci] / (n_steps * len(layers))), layers=tuple(layers),
        ))
    return out


def _prompt_curve(captured_layer, n_context: int, obs: int, chunk: int, sinks: int, window: int,
                  per_row: bool):  # fmt: skip
    """`mass_curve` of one layer as the store's Selector measures it at prefill: the attention of the
    prompt's last `obs` queries (causal) over the prompt, the body laid out in chunks of `chunk`."""
    q, k, scaling = captured_layer
    n_kv, groups = k.shape[0], q.shape[0] // k.shape[0]
    qt = q[:, :obs].reshape(n_kv, groups, obs, -1)
    s = torch.einsum("kgtd,knd->kgtn", qt, k[:, :n_context]) * scaling
    qpos = torch.arange(n_context - obs, n_context)[:, None]
    s = s.masked_fill(torch.arange(n_context)[None, :] > qpos, float("-inf"))
    mass = torch.softmax(s, dim=-1).sum(dim=(1, 2))[None]  # [1, Hkv, n_context]
    body = ChunkLayout(1, 1, chunk, 1, torch.float32, sinks, window).body_chunks(n_context) * chunk
    return mass_curve(mass, sinks, body, per_row=per_row)


def _first_step_mass(captured: dict, n_context: int, obs: int) -> dict[int, torch.Tensor]:
    """Per layer, the first step's attention mass per key summed over each query group: [1, Hkv, t]
    (t = n_context + 1: the prompt and the step itself; the step's query follows `obs` prompt ones)."""
    t, out = n_context + 1, {}
    for layer, (q, k, scaling) in captured.items():
        n_kv, groups = k.shape[0], q.shape[0] // k.shape[0]
        s = torch.einsum("hd,htd->ht", q[:, obs], k[:, :t].repeat_interleave(groups, 0)) * scaling
        out[layer] = torch.softmax(s, dim=-1).view(n_kv, groups, t).sum(1)[None]
    return out


def _whole_layers(first: dict, n_context: int, policy, budget: int, threshold: float) -> frozenset[int]:
    """Layers `policy` (a chunk policy: it has `chunk`) reads whole at `budget` tokens (module doc);
    first: `_first_step_mass`."""
    from ..sparse.whole_layers import oracle_recall, whole_layers

    chunk = getattr(policy, "chunk", None)
    if chunk is None or threshold <= 0:
        return frozenset()
    ceilings: list[float | None] = [None] * (max(first) + 1)
    m = ChunkLayout(1, 1, chunk, 1, torch.float32, policy.sinks, policy.window).body_chunks(n_context + 1)
    for layer, mass in first.items():
        ceilings[layer] = oracle_recall(mass, policy.sinks, chunk, m, budget // chunk)
    return whole_layers(ceilings, threshold)


def format_recall_table(results: Sequence[RecallResult]) -> str:
    """Layers down, policy@budget across; last rows: mean over layers and tokens read per step."""
    if not results:
        return "(no recall results)"
    heads = [r.label for r in results]
    width = max(10, *(len(h) for h in heads))
    lines = ["layer " + "".join(f"{h:>{width + 2}}" for h in heads)]
    names = results[0].layers or tuple(range(len(results[0].per_layer)))
    for li, name in enumerate(names):
        lines.append(f"{name:>5} " + "".join(f"{r.per_layer[li]:>{width + 2}.3f}" for r in results))
    lines.append(" mean " + "".join(f"{r.mean:>{width + 2}.3f}" for r in results))
    lines.append(" read " + "".join(f"{r.read:>{width + 2}.0f}" for r in results))
    r0 = results[0]
    lines.append(f"(recall of exact attention mass; {r0.n_context} natural-text tokens, "
                 f"{r0.n_steps} teacher-forced decode steps; 'read' = tokens per KV head per step)")
    return "\n".join(lines)
