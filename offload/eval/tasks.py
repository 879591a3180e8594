"""The task registry: name -> generator, scoring metric and answer length.

A generator is `fn(tokenizer, length, seed, depth=None) -> Sample`, deterministic for its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .common_words import CWE_MAX_NEW_TOKENS, common_words
from .frequent_words import FWE_MAX_NEW_TOKENS, frequent_words
from .json_extract import JSON_MAX_NEW_TOKENS, json_extract
from .multi_hop import MULTI_HOP_MAX_NEW_TOKENS, multi_hop
from .multi_needle import MULTI_NEEDLE_MAX_NEW_TOKENS, multi_needle
from .niah import NIAH_MAX_NEW_TOKENS, niah_multikey_2, niah_multikey_3, niah_single_1
from .passkey import PASSKEY_MAX_NEW_TOKENS, passkey
from .prose_fact import PROSE_FACT_MAX_NEW_TOKENS, prose_fact
from .records import RECORDS_MAX_NEW_TOKENS, csv_1key, jsonl_1key, log_1key, records_3key
from .sample import Sample
from .variable_tracking import VT_MAX_NEW_TOKENS, variable_tracking

__all__ = ["Task", "TASKS", "get_task", "generate_sample"]


@dataclass(frozen=True)
class Task:
    """name: registry key. generate: the sample generator. max_new_tokens: answer budget (counted in
    the length). single_needle: one needle whose depth the runner spreads over the samples."""

    name: str
    generate: Callable[..., Sample]
    max_new_tokens: int
    single_needle: bool
    description: str


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("niah_single_1", niah_single_1, NIAH_MAX_NEW_TOKENS["niah_single_1"], True,
             "one word-key -> 7-digit needle in noise"),
        Task("niah_multikey_2", niah_multikey_2, NIAH_MAX_NEW_TOKENS["niah_multikey_2"], True,
             "word-key -> number needle among distractor needles"),
        Task("niah_multikey_3", niah_multikey_3, NIAH_MAX_NEW_TOKENS["niah_multikey_3"], True,
             "UUID -> UUID needle among distractor needles"),
        Task("vt", variable_tracking, VT_MAX_NEW_TOKENS, False,
             "variable tracking: one chain of 4 hops in noise"),
        Task("cwe", common_words, CWE_MAX_NEW_TOKENS, False,
             "common-word extraction: top 10 of a numbered list"),
        Task("fwe", frequent_words, FWE_MAX_NEW_TOKENS, False,
             "frequent coded-word extraction: top 3 of a Zipf text"),
        Task("passkey", passkey, PASSKEY_MAX_NEW_TOKENS, True,
             "5-digit pass key in noise"),
        Task("multi_needle", multi_needle, MULTI_NEEDLE_MAX_NEW_TOKENS, False,
             "8 key -> number facts spread over natural text; list all 8"),
        # extraction families (issue 22): structured records, prose, two hops, a JSON object
        Task("log_1key", log_1key, RECORDS_MAX_NEW_TOKENS[1], True,
             "one session -> 7-digit code in a service log of look-alike lines"),
        Task("csv_1key", csv_1key, RECORDS_MAX_NEW_TOKENS[1], True,
             "one session -> code in a CSV table"),
        Task("jsonl_1key", jsonl_1key, RECORDS_MAX_NEW_TOKENS[1], True,
             "one session -> code in JSON lines"),
        Task("records_3key", records_3key, RECORDS_MAX_NEW_TOKENS[3], False,
             "three sessions -> codes at once (log, csv, jsonl in turn)"),
        Task("prose_fact", prose_fact, PROSE_FACT_MAX_NEW_TOKENS, True,
             "a two-word passphrase stated once in natural prose"),
        Task("multi_hop", multi_hop, MULTI_HOP_MAX_NEW_TOKENS, False,
             "person -> locker -> combination, two facts apart, among 3 other chains"),
        Task("json_extract", json_extract, JSON_MAX_NEW_TOKENS, False,
             "fill a 6-field JSON object from facts scattered over prose (per field)"),
    )
}


def get_task(name: str) -> Task:
    """The registered task, or a ValueError naming the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def generate_sample(task: str, tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """One sample of `task` whose prompt + answer budget fills `length` tokens (within 2 %)."""
    return get_task(task).generate(tokenizer, length, seed, depth)
