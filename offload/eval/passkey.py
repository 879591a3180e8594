"""Passkey retrieval (Mohtashami & Jaggi, 2023): a 5-digit pass key hidden in repeated noise."""

from __future__ import annotations

from .haystack import haystack_sample, noise_units
from .sample import Sample, make_rng

__all__ = ["passkey", "PASSKEY_MAX_NEW_TOKENS"]

TEMPLATE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n\n{context}\n\nWhat is the pass key?"
)
ANSWER_PREFIX = "The pass key is"
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_MAX_NEW_TOKENS = 16


def passkey(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """One pass-key sentence at `depth` (random when None) in RULER's noise."""
    rng = make_rng("passkey", length, seed)
    key = str(rng.randrange(10000, 100000))
    depth = rng.random() if depth is None else depth
    return haystack_sample(
        tokenizer,
        task="passkey",
        length=length,
        seed=seed,
        max_new_tokens=PASSKEY_MAX_NEW_TOKENS,
        units=noise_units((length - PASSKEY_MAX_NEW_TOKENS) // 3 + 8),
        needles=[NEEDLE.format(key=key)],
        depths=[depth],
        question=lambda context: (TEMPLATE.format(context=context), ANSWER_PREFIX),
        references=[key],
    )
