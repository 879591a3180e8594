"""RULER's frequent-word extraction (fwe): a text of random 6-letter coded words whose counts follow a
Zipf law (alpha = 2); the most frequent "word" is the noise token "....", the answer is the next 3."""

from __future__ import annotations

import math
import string

from .sample import Sample, fit_haystack, make_rng, render_prompt

__all__ = ["frequent_words", "FWE_MAX_NEW_TOKENS"]

TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
    "ignore the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
ANSWER_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_MAX_NEW_TOKENS = 32
ALPHA = 2.0
NOISE_WORD = "...."


def frequent_words(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """`depth` is ignored (no needle). Vocabulary size length // 50 as in RULER."""
    del depth
    rng = make_rng("fwe", length, seed)
    vocab_size = max(length // 50, 8)
    vocab: list[str] = []
    while len(vocab) < vocab_size:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
        if word not in vocab:
            vocab.append(word)
    vocab[0] = NOISE_WORD  # rank 1 is noise; ranks 2-4 are the answer
    zeta = math.pi**2 / 6  # zeta(ALPHA = 2): counts are n_words * rank^-2 / zeta(2)

    def context_of(n_words: int) -> str:
        words = []
        for rank, w in enumerate(vocab, start=1):
            words += [w] * int(n_words * rank**-ALPHA / zeta)
        make_rng("fwe-order", length, f"{seed}|{n_words}").shuffle(words)
        return " ".join(words)

    def messages(n_words: int):
        return [{"role": "user", "content": TEMPLATE.format(context=context_of(n_words))}]

    budget = length - FWE_MAX_NEW_TOKENS
    build = lambda k, m: render_prompt(tokenizer, messages(k), ANSWER_PREFIX)  # noqa: E731
    k, _, prompt, n = fit_haystack(tokenizer, budget, build, 4 * length)
    return Sample(
        task="fwe",
        length=length,
        seed=str(seed),
        messages=tuple(messages(k)),
        answer_prefix=ANSWER_PREFIX,
        prompt=prompt,
        n_prompt_tokens=n,
        references=tuple(vocab[1:4]),
        metric="all",
        max_new_tokens=FWE_MAX_NEW_TOKENS,
        context=context_of(k),
    )
