"""RULER's needle-in-a-haystack tasks: one needle `One of the special magic {kind} for {key} is:
{value}.` asked for by key.

- niah_single_1: noise haystack, word key, 7-digit number.
- niah_multikey_2: the haystack is distractor needles (other word keys -> numbers), one line each.
- niah_multikey_3: the same with UUID keys -> UUID values.
"""

from __future__ import annotations

from .haystack import haystack_sample, noise_units, numbers, uuids, word_keys
from .sample import Sample, make_rng

__all__ = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "NIAH_MAX_NEW_TOKENS"]

TEMPLATE = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n{context}\n"
    "What are all the special magic {kind} for {query} mentioned in the provided text?"
)
ANSWER_PREFIX = "The special magic {kind} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {kind} for {key} is: {value}."

NIAH_MAX_NEW_TOKENS = {"niah_single_1": 32, "niah_multikey_2": 32, "niah_multikey_3": 64}


def _question(kind: str, key: str):
    def question(context: str) -> tuple[str, str]:
        user = TEMPLATE.format(kind=kind, context=context, query=key)
        return user, ANSWER_PREFIX.format(kind=kind, query=key)

    return question


def _depth(rng, depth):
    return rng.random() if depth is None else depth


def niah_single_1(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """One word-key -> 7-digit needle in RULER's noise ("The grass is green. ...")."""
    task = "niah_single_1"
    rng = make_rng(task, length, seed)
    (key,), (value,) = word_keys(rng, 1), numbers(rng, 1)
    max_new = NIAH_MAX_NEW_TOKENS[task]
    return haystack_sample(
        tokenizer,
        task=task,
        length=length,
        seed=seed,
        max_new_tokens=max_new,
        units=noise_units((length - max_new) // 3 + 8),  # a noise sentence is >= 3 tokens
        needles=[NEEDLE.format(kind="numbers", key=key, value=value)],
        depths=[_depth(rng, depth)],
        question=_question("numbers", key),
        references=[value],
    )


def _multikey(task: str, tokenizer, length: int, seed, rng, depth, keys, values, kind: str) -> Sample:
    """keys[0] -> values[0] is asked for; the other pairs are the haystack, one needle per line."""
    key, value = keys[0], values[0]
    distractors = [
        NEEDLE.format(kind=kind, key=k, value=v) + "\n"
        for k, v in zip(keys[1:], values[1:])
        if key not in k  # the asked key must not hide inside another key
    ]
    max_new = NIAH_MAX_NEW_TOKENS[task]
    return haystack_sample(
        tokenizer,
        task=task,
        length=length,
        seed=seed,
        max_new_tokens=max_new,
        units=distractors,
        needles=[NEEDLE.format(kind=kind, key=key, value=value) + "\n"],
        depths=[_depth(rng, depth)],
        question=_question(kind, key),
        references=[value],
        filler=lambda k, m: noise_units(m),  # needles are 20-100 tokens: top up with noise
        max_filler=40,
    )


def niah_multikey_2(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """Word key -> 7-digit needle among distractor needles of the same form."""
    task = "niah_multikey_2"
    rng = make_rng(task, length, seed)
    n = (length - NIAH_MAX_NEW_TOKENS[task]) // 12 + 8  # a needle line is >= 12 tokens
    return _multikey(
        task, tokenizer, length, seed, rng, depth, word_keys(rng, n), numbers(rng, n), "numbers"
    )


def niah_multikey_3(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """UUID key -> UUID needle among distractor needles of the same form."""
    task = "niah_multikey_3"
    rng = make_rng(task, length, seed)
    n = (length - NIAH_MAX_NEW_TOKENS[task]) // 60 + 8  # a UUID needle line is >= 60 tokens
    ids = uuids(rng, 2 * n)
    return _multikey(task, tokenizer, length, seed, rng, depth, ids[:n], ids[n:], "uuids")
