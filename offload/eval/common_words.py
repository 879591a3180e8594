"""RULER's common-word extraction (cwe): a numbered list where 10 words appear 30 times and the others
3 times (6 and 1 below a 4k length, as RULER does: 300 entries do not fit in 1k); name the 10 common
words. An aggregation task: the answer is spread over the whole context. Words come from the
natural-text vocabulary (offload.eval.corpus), no downloads."""

from __future__ import annotations

from .corpus import vocabulary
from .sample import Sample, fit_haystack, make_rng, render_prompt

__all__ = ["common_words", "CWE_MAX_NEW_TOKENS", "CWE_COMMON"]

TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
ANSWER_PREFIX = "Answer: The top 10 words that appear most often in the list are:"
CWE_COMMON = 10
CWE_MAX_NEW_TOKENS = 64


def repeats_for(length: int) -> tuple[int, int]:
    """(repeats of each common word, repeats of each other word), RULER's choice by length."""
    return (30, 3) if length >= 4096 else (6, 1)


def common_words(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """`depth` is ignored (no needle). The list grows by uncommon words until the budget is full."""
    del depth
    rng = make_rng("cwe", length, seed)
    words = rng.sample(vocabulary(), len(vocabulary()))
    common, others = words[:CWE_COMMON], words[CWE_COMMON:]
    n_common, n_other = repeats_for(length)

    def context_of(k: int) -> str:
        entries = common * n_common + others[:k] * n_other
        make_rng("cwe-order", length, f"{seed}|{k}").shuffle(entries)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(entries))

    def messages(k: int):
        return [{"role": "user", "content": TEMPLATE.format(context=context_of(k))}]

    budget = length - CWE_MAX_NEW_TOKENS
    build = lambda k, m: render_prompt(tokenizer, messages(k), ANSWER_PREFIX)  # noqa: E731
    k, _, prompt, n = fit_haystack(tokenizer, budget, build, len(others))
    return Sample(
        task="cwe",
        length=length,
        seed=str(seed),
        messages=tuple(messages(k)),
        answer_prefix=ANSWER_PREFIX,
        prompt=prompt,
        n_prompt_tokens=n,
        references=tuple(common),
        metric="all",
        max_new_tokens=CWE_MAX_NEW_TOKENS,
        context=context_of(k),
    )
