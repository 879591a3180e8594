"""Needle-in-a-haystack samples: haystack units (noise sentences, prose sentences, distractor needles)
fitted to the token budget with the needles inserted at their depths. Every haystack task goes
through `haystack_sample`; the task files only say what the units, needles and question are.
"""

from __future__ import annotations

import string
import uuid
from typing import Callable, Sequence

from .corpus import NOISE_SENTENCES, natural_sentences, vocabulary
from .sample import Sample, fit_haystack, insert_at_depths, join_units, render_prompt

__all__ = [
    "haystack_sample",
    "noise_units",
    "natural_units",
    "word_keys",
    "distinct_word_keys",
    "numbers",
    "uuids",
    "uppercase_names",
    "spread_depths",
]


def _distinct(draw: Callable[[], str], n: int) -> list[str]:
    """n distinct values of draw(), in drawing order (so a longer list extends a shorter one)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        v = draw()
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def noise_units(k: int) -> list[str]:
    """k sentences of RULER's noise, a line break after each full round of five."""
    n = len(NOISE_SENTENCES)
    return [NOISE_SENTENCES[i % n] + ("\n" if i % n == n - 1 else "") for i in range(k)]


def natural_units(rng, k: int) -> list[str]:
    """k consecutive prose sentences from a random start in the corpus (wrapping around)."""
    sentences = natural_sentences()
    start = rng.randrange(len(sentences))
    return [sentences[(start + i) % len(sentences)] for i in range(k)]


def word_keys(rng, n: int) -> list[str]:
    """n distinct two-word keys like "buffer-orchard" from the corpus vocabulary."""
    vocab = vocabulary()
    return _distinct(lambda: f"{rng.choice(vocab)}-{rng.choice(vocab)}", n)


def distinct_word_keys(rng, n: int) -> list[str]:
    """n word keys none of which contains another (so each key names exactly one record)."""
    keys: list[str] = []
    for key in word_keys(rng, 4 * n):
        if not any(key in k or k in key for k in keys):
            keys.append(key)
        if len(keys) == n:
            return keys
    raise AssertionError("vocabulary too small for distinct keys")  # pragma: no cover


def numbers(rng, n: int, digits: int = 7) -> list[str]:
    """n distinct random numbers with exactly `digits` digits."""
    return _distinct(lambda: str(rng.randrange(10 ** (digits - 1), 10**digits)), n)


def uuids(rng, n: int) -> list[str]:
    """n distinct version-4 UUID strings drawn from `rng` (uuid4() would not be reproducible)."""
    return _distinct(lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)), n)


def uppercase_names(rng, n: int, size: int = 5) -> list[str]:
    """n distinct random names of `size` capital letters (variable tracking)."""
    return _distinct(lambda: "".join(rng.choice(string.ascii_uppercase) for _ in range(size)), n)


def spread_depths(n: int) -> list[float]:
    """n depths spread evenly over [0, 1] (both ends included when n > 1)."""
    return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]


def haystack_sample(
    tokenizer,
    *,
    task: str,
    length: int,
    seed,
    max_new_tokens: int,
    units: Sequence[str],
    needles: Sequence[str],
    depths: Sequence[float],
    question: Callable[[str], tuple[str, str]],
    references: Sequence[str],
    metric: str = "all",
    filler: Callable[[int, int], list[str]] | None = None,
    max_filler: int = 0,
) -> Sample:
    """Fit `units` (then `filler`) around the needles so the prompt fills length - max_new_tokens.

    question(context) -> (user message, answer prefix). units must hold more than the budget needs.
    filler(k, m) -> m finer units that follow the first k units (topping up to within tolerance).
    """

    def context_of(k: int, m: int) -> str:
        hay = list(units[:k]) + (filler(k, m) if filler and m else [])
        return join_units(insert_at_depths(hay, needles, depths))

    def build(k: int, m: int) -> str:
        user, prefix = question(context_of(k, m))
        return render_prompt(tokenizer, [{"role": "user", "content": user}], prefix)

    budget = length - max_new_tokens
    k, m, prompt, n = fit_haystack(tokenizer, budget, build, len(units), max_filler if filler else 0)
    context = context_of(k, m)
    user, prefix = question(context)
    return Sample(
        task=task,
        length=length,
        seed=str(seed),
        messages=({"role": "user", "content": user},),
        answer_prefix=prefix,
        prompt=prompt,
        n_prompt_tokens=n,
        references=tuple(references),
        metric=metric,
        max_new_tokens=max_new_tokens,
        context=context,
        needles=tuple(needles),
        depths=tuple(depths),
    )
