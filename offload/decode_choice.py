"""`--budget auto` (the default): which decode runs for a model at a context, and why.

Exact attention when the whole KV fits the GPU hot set the memory plan leaves (a step then reads only
GPU memory: nothing to select, nothing to fetch). Otherwise sparse decode at `AUTO_FRACTION` of the
context (the budget the evals measure: `bench/results/`), capped at the hot set the sparse plan
leaves, so a step's selection is resident; exact attention over the tiers when only that fits (sparse
decode's summaries need room too). The reason is a sentence for the plan output.

Policy only: `plan_for(budget)` (the CLI's) builds the config and memory plan for a budget (None =
exact), the rest is decided here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .plan import GIB, MemoryPlan

__all__ = ["AUTO_FRACTION", "DecodeChoice", "choose_decode", "explicit_choice", "decode_label", "fit_rest",
           "fit_summaries", "HOST_SKETCHES_NOTE"]

HOST_SKETCHES_NOTE = ("two-level selection (token2) with its token sketches in host memory: one level's sketches "
                      "do not fit the GPU at this context")

AUTO_FRACTION = 1 / 16


@dataclass(frozen=True)
class DecodeChoice:
    """budget: None (exact attention) or the sparse budget (tokens per layer, or a fraction)."""

    budget: int | float | None
    reason: str

    @property
    def sparse(self) -> bool:
        return self.budget is not None


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / (1 << 20):.1f} MiB"


def fit_rest(config, plan_of: Callable[[object], MemoryPlan]):
    """(config, plan) for `config`, or for it without the rest (`--rest auto`: the rest is what a step
    does not select, kept at low precision) when
    - only that fits the GPU: the rest needs room beside the weights; or
    - the plan is for a CPU whose memory holds the whole KV: there the rest costs more than exact
      attention over every token: a CPU unpacks the 4-bit levels at every step (SmolLM2 at 32k, 2
      threads: the rest 394 ms a step, exact attention over all 32k tokens 207 ms;
      bench/results/speed-32k.md), so sparse decode is worth its speed there only without it."""
    memory = plan_of(config)
    sparse = config.sparse
    if sparse is None or sparse.rest is None or (memory.gpu_fits and memory.device != "cpu"):
        return config, memory
    lean = config.replace(sparse=dataclasses.replace(sparse, rest=None))
    lean_memory = plan_of(lean)
    if memory.device == "cpu" and lean_memory.whole_kv_fits:
        return lean, lean_memory
    return (lean, lean_memory) if lean_memory.gpu_fits and not memory.gpu_fits else (config, memory)


def fit_summaries(config, fit: Callable[[object], tuple[object, MemoryPlan]]):
    """(config, plan) from `fit` (config -> (config, plan): the rest's fitting, or the plan alone), or,
    when that does not fit and the policy is `token` (one level, single tokens) or two-level with its
    sketches on the device, the same with two levels and the token sketches in host memory (`token2`,
    sketches="host") if that fits: only block bounds stay resident, 1/16-1/4 of the sketches' bytes
    (what a million tokens need on a 24 GB GPU: issue 25). Kept otherwise: the plan says why."""
    config1, memory = fit(config)
    policy = config.sparse.policy if config.sparse is not None else None
    from .sparse.policies.token import Token, TwoLevel

    if memory.gpu_fits or not isinstance(policy, Token) or policy.unit != "token" or policy.sketches == "host":
        return config1, memory
    two = (dataclasses.replace(policy, sketches="host") if policy.candidates else
           TwoLevel(rank=policy.rank, share=policy.share, sketches="host"))  # fmt: skip
    config2, memory2 = fit(config.replace(sparse=dataclasses.replace(config.sparse, policy=two)))
    return (config2, memory2) if memory2.gpu_fits else (config1, memory)


def choose_decode(plan_for: Callable[[int | float | None], tuple[object, MemoryPlan]]):
    """(choice, config, plan) for `--budget auto`; `plan_for(budget)` -> (config, plan)."""
    config0, exact = plan_for(None)
    config = config0
    kv = f"the KV ({_gib(exact.kv_bytes)} at {exact.ctx:,} tokens)"
    if exact.whole_kv_fits:
        return DecodeChoice(None, f"exact attention (--budget auto): {kv} fits on the GPU beside the "
                                  "weights"), config0, exact  # fmt: skip
    config, sparse = plan_for(AUTO_FRACTION)
    want = max(1, int(exact.ctx * AUTO_FRACTION))
    why = (f"{kv} does not fit the {_gib(exact.hot_set_bytes)} GPU hot set the plan leaves"
           if exact.gpu_fits else f"{kv} and the weights do not fit the GPU")
    if not sparse.gpu_fits and exact.gpu_fits:  # no room for sparse decode's summaries: exact, read from the tiers
        return DecodeChoice(None, f"exact attention, the KV read from the tiers (--budget auto): {why}, and "
                                  "sparse decode's summaries do not fit either"), config0, exact  # fmt: skip
    if sparse.gpu_fits and sparse.budget_tokens < want:  # the selection must be resident: cap it
        budget = max(1, sparse.budget_tokens)
        config, sparse = plan_for(budget)
        return DecodeChoice(budget, f"sparse decode at {budget:,} tokens/layer (--budget auto: the hot set's "
                                    f"room; 1/16 would be {want:,}): {why}"), config, sparse  # fmt: skip
    return DecodeChoice(AUTO_FRACTION, f"sparse decode at 1/16 of the context ({want:,} tokens/layer, "
                                       f"--budget auto): {why}"), config, sparse  # fmt: skip


def explicit_choice(budget: int | float | None, dense_flag: bool) -> DecodeChoice:
    """The choice the user made (--dense, or --budget N)."""
    if budget is None:
        return DecodeChoice(None, "exact attention (--dense)" if dense_flag else "exact attention")
    return DecodeChoice(budget, f"sparse decode at {_budget_text(budget)} (--budget)")


def _budget_text(budget: int | float) -> str:
    if isinstance(budget, float):
        inv = 1 / budget
        return f"1/{inv:.0f} of the context" if abs(inv - round(inv)) < 1e-9 else f"{budget:g} of the context"
    return f"{budget:,} tokens/layer"


def decode_label(config) -> str:
    """A few words for the speed line: `exact`, or `sparse 1/16` / `sparse 2,048 tok/layer`."""
    if config.sparse is None:
        return "exact"
    b = config.sparse.budget
    return "sparse " + (_budget_text(b).replace(" of the context", "") if isinstance(b, float) else f"{b:,} tok/layer")
