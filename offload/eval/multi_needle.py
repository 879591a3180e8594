"""Multi-needle extraction: 8 distinct key -> 7-digit facts at depths spread evenly over 0-100 % of a
natural-text haystack (stdlib docstrings); the question names all 8 keys in document order and the
answer must list all 8 values. Scored by the fraction recovered.

This is the extraction-heavy case: every value needs a different far-away span during decode, which is
where landmark/summary-based selection is known to lose needles."""

from __future__ import annotations

from .haystack import distinct_word_keys, haystack_sample, natural_units, numbers, spread_depths
from .sample import Sample, make_rng

__all__ = ["multi_needle", "MULTI_NEEDLE_COUNT", "MULTI_NEEDLE_MAX_NEW_TOKENS"]

TEMPLATE = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards.\n{context}\n"
    "What are the special magic numbers for {query} mentioned in the provided text? "
    "List all {n} of them."
)
ANSWER_PREFIX = "The special magic numbers for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic numbers for {key} is: {value}."
MULTI_NEEDLE_COUNT = 8
MULTI_NEEDLE_MAX_NEW_TOKENS = 160  # "- key: value" x 8 is ~120 tokens


def multi_needle(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """`depth` is ignored: the 8 needles always sit at 0, 1/7, ..., 1 of the haystack."""
    del depth
    rng = make_rng("multi_needle", length, seed)
    keys = distinct_word_keys(rng, MULTI_NEEDLE_COUNT)
    values = numbers(rng, MULTI_NEEDLE_COUNT)
    units = natural_units(rng, (length - MULTI_NEEDLE_MAX_NEW_TOKENS) // 3 + 8)
    query = ", ".join(keys[:-1]) + " and " + keys[-1]

    def question(context: str) -> tuple[str, str]:
        user = TEMPLATE.format(context=context, query=query, n=MULTI_NEEDLE_COUNT)
        return user, ANSWER_PREFIX.format(query=query)

    def filler(k: int, m: int) -> list[str]:
        # the first m words of the sentence after the k-th: prose granularity is ~20 tokens
        return [" ".join(units[k].split()[:m])]

    return haystack_sample(
        tokenizer,
        task="multi_needle",
        length=length,
        seed=seed,
        max_new_tokens=MULTI_NEEDLE_MAX_NEW_TOKENS,
        units=units[:-1],  # keep one sentence past the end for the filler
        needles=[NEEDLE.format(key=k, value=v) for k, v in zip(keys, values)],
        depths=spread_depths(MULTI_NEEDLE_COUNT),
        question=question,
        references=values,
        filler=filler,
        max_filler=80,
    )
