"""One eval sample, and the machinery every task generator shares: rendering the chat prompt, counting
its tokens, fitting a haystack to a token budget, and inserting needles at given depths.

Length convention (RULER's): a sample of length L is a prompt of at most L - max_new_tokens tokens,
counted on the exact text the model sees (chat template with the generation prompt, then the answer
prefix), so that prompt + answer fit in L. Generators fill the prompt to within 2 % of that budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from ..chat_format import has_own_chat_template
from .errors import EvalError

__all__ = [
    "GenerationError",
    "Sample",
    "LENGTH_TOLERANCE",
    "render_prompt",
    "count_tokens",
    "make_rng",
    "join_units",
    "insert_at_depths",
    "fit_haystack",
]

LENGTH_TOLERANCE = 0.02  # prompt tokens land in [(1 - tol) * budget, budget]


class GenerationError(EvalError):
    """A sample cannot be built as asked (length too small for the task's fixed text, bad depth)."""


@dataclass(frozen=True)
class Sample:
    """One prompt with its references.

    prompt: the exact text fed to the model: `messages` through the chat template with the generation
        prompt, followed by `answer_prefix` (the start of the assistant's turn, RULER-style).
    context: the haystack with the needles in it, as it appears inside the user message.
    needles / depths: each inserted needle's text and its requested depth in [0, 1] (fraction of the
        haystack, needles excluded, that precedes it).
    metric: "all" (fraction of references found: RULER string_match_all) or "part" (any: string_match_part).
    """

    task: str
    length: int
    seed: str
    messages: tuple
    answer_prefix: str
    prompt: str
    n_prompt_tokens: int
    references: tuple[str, ...]
    metric: str
    max_new_tokens: int
    context: str
    needles: tuple[str, ...] = ()
    depths: tuple[float, ...] = ()


def render_prompt(tokenizer, messages: Sequence[dict], answer_prefix: str = "") -> str:
    """What the model reads. Chat form (a tokenizer with a chat template: instruct models): the
    template with the generation prompt, then the answer prefix. Completion form (no template: base
    models, and the turn format `chat_format` gives a base model): the messages' text, a blank line,
    then the answer prefix on its own line, so the answer is the document's natural continuation."""
    if has_own_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return text + answer_prefix
    body = "\n\n".join(m["content"] for m in messages)
    return body + "\n\n" + answer_prefix  # a BOS is the tokenizer's to add when encoding


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of an already rendered prompt (special tokens in the text are parsed, none added)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_rng(task: str, length: int, seed) -> random.Random:
    """A generator's private RNG: seeding with a str hashes it with sha512, so it is stable across
    processes and PYTHONHASHSEED."""
    return random.Random(f"offload-eval|{task}|{length}|{seed}")


def join_units(units: Sequence[str]) -> str:
    """Units joined by a space, or by nothing after a unit that ends its own line."""
    return "".join(u if u.endswith("\n") else u + " " for u in units).rstrip()


def insert_at_depths(units: Sequence[str], needles: Sequence[str], depths: Sequence[float]) -> list[str]:
    """`units` with each needle inserted at the unit boundary nearest (in characters) to its depth.

    Needles never split a unit. Needles at the same boundary keep their given order.
    """
    if len(needles) != len(depths):
        raise GenerationError("one depth per needle")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise GenerationError(f"needle depth must be in [0, 1], got {d!r}")
    ends = [0]  # ends[i]: characters of join_units(units[:i]) (plus the separator)
    for u in units:
        ends.append(ends[-1] + len(u) + (0 if u.endswith("\n") else 1))
    total = ends[-1]
    slots = []
    for d in depths:
        want = d * total
        slots.append(min(range(len(ends)), key=lambda i: (abs(ends[i] - want), i)))
    out: list[str] = []
    order = sorted(range(len(needles)), key=lambda j: (slots[j], j))
    k = 0
    for i in range(len(units) + 1):
        while k < len(order) and slots[order[k]] == i:
            out.append(needles[order[k]])
            k += 1
        if i < len(units):
            out.append(units[i])
    return out


def _largest_fitting(measure: Callable[[int], int], budget: int, hi_limit: int) -> int:
    """Largest k in [0, hi_limit] with measure(k) <= budget, assuming measure grows with k."""
    lo, hi = 0, 1
    while hi <= hi_limit and measure(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, hi_limit + 1)  # invariant: measure(lo) <= budget (or lo == 0), hi does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def fit_haystack(
    tokenizer,
    budget: int,
    build: Callable[[int, int], str],
    max_units: int,
    max_filler: int = 0,
) -> tuple[int, int, str, int]:
    """Find haystack sizes so the rendered prompt has at most `budget` tokens, as close as it gets.

    build(k, m) renders the whole prompt from k haystack units and m filler units (finer-grained
    padding appended to the haystack: words of a next sentence, noise sentences). Returns
    (k, m, prompt, n_tokens); raises GenerationError if the result falls outside the tolerance.
    """
    if count_tokens(tokenizer, build(0, 0)) > budget:
        raise GenerationError(f"the task's fixed text alone exceeds the {budget}-token budget")
    k = _largest_fitting(lambda k: count_tokens(tokenizer, build(k, 0)), budget, max_units)
    m = 0
    if max_filler:
        m = _largest_fitting(lambda m: count_tokens(tokenizer, build(k, m)), budget, max_filler)
    prompt = build(k, m)
    n = count_tokens(tokenizer, prompt)
    if not (1 - LENGTH_TOLERANCE) * budget <= n <= budget:
        raise GenerationError(f"could only fit {n} tokens for a budget of {budget}")
    return k, m, prompt, n
