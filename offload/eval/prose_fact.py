"""A fact inside natural prose: one sentence giving a two-word passphrase, in running English text
(the stdlib-docstring corpus) rather than a noise haystack. Nothing marks the sentence out but its
meaning: the words around it are as varied as it is, so attention cannot find it by its strangeness.
Depth spread over the samples."""

from __future__ import annotations

from .haystack import haystack_sample, natural_units
from .sample import Sample, make_rng

__all__ = ["prose_fact", "PROSE_FACT_MAX_NEW_TOKENS"]

COLORS = ("violet", "amber", "crimson", "teal", "ochre", "indigo", "scarlet", "olive", "silver", "cobalt")
ANIMALS = ("heron", "lynx", "walrus", "falcon", "otter", "badger", "ibis", "marten", "gecko", "bison")
THINGS = ("the archive", "the west gate", "the old server", "the supply room", "the harbor office")

TEMPLATE = "Read the following text carefully.\n\n{context}\n\nWhat is the passphrase for {thing}?"
ANSWER_PREFIX = "The passphrase for {thing} is"
NEEDLE = "The passphrase for {thing} is {phrase}, and it must not be written down anywhere else."
PROSE_FACT_MAX_NEW_TOKENS = 16


def prose_fact(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """One passphrase sentence at `depth` (random when None) in consecutive prose sentences."""
    rng = make_rng("prose_fact", length, seed)
    thing = rng.choice(THINGS)
    phrase = f"{rng.choice(COLORS)} {rng.choice(ANIMALS)}"
    depth = rng.random() if depth is None else depth
    units = natural_units(rng, (length - PROSE_FACT_MAX_NEW_TOKENS) // 3 + 8)

    def filler(k: int, m: int) -> list[str]:  # the first m words of the next sentence
        return [" ".join(units[k].split()[:m])]

    return haystack_sample(
        tokenizer, task="prose_fact", length=length, seed=seed, max_new_tokens=PROSE_FACT_MAX_NEW_TOKENS,
        units=units[:-1], needles=[NEEDLE.format(thing=thing, phrase=phrase)], depths=[depth],
        question=lambda context: (TEMPLATE.format(context=context, thing=thing),
                                  ANSWER_PREFIX.format(thing=thing)),
        references=[phrase], filler=filler, max_filler=80,
    )
