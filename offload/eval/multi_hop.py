"""Multi-hop across two facts in prose: "{person} keeps the spare key in locker {L}." and, elsewhere,
"Locker {L} opens with the combination {C}." The question names the person and asks for the
combination: the answer (prefixed "{person} keeps the spare key in locker") first copies the locker
from the first fact, then must find the second fact by the number it just wrote — a decode-time
query that did not exist at prefill. Scored per hop: the locker, and the combination (SmolLM2-135M
rarely writes the second: the first is then a keyed lookup among four look-alike facts). Three other
person -> locker -> combination chains stand beside it, so no single sentence answers. Facts at
random depths in natural prose."""

from __future__ import annotations

from .haystack import haystack_sample, natural_units, numbers
from .sample import Sample, make_rng

__all__ = ["multi_hop", "MULTI_HOP_MAX_NEW_TOKENS", "MULTI_HOP_CHAINS"]

PEOPLE = ("Amara", "Bruno", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hiroshi", "Ingrid", "Joaquin",
          "Kalani", "Leopold", "Marisol", "Nikolai", "Oksana", "Priya")
TEMPLATE = (
    "Read the following text carefully.\n\n{context}\n\n"
    "In which locker does {person} keep the spare key, and what combination opens that locker? "
    "Answer in two sentences: first the locker, then the combination that opens it."
)
# the answer copies the first hop, then must find the second fact by what it just wrote
ANSWER_PREFIX = "{person} keeps the spare key in locker"
WHERE = "{person} keeps the spare key in locker {locker}."
OPENS = "Locker {locker} opens with the combination {code}."
MULTI_HOP_CHAINS = 4  # the asked chain and three others
MULTI_HOP_MAX_NEW_TOKENS = 24


def multi_hop(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """`depth` is ignored: the 2 x 4 facts sit at random depths."""
    del depth
    rng = make_rng("multi_hop", length, seed)
    people = rng.sample(PEOPLE, MULTI_HOP_CHAINS)
    lockers = [f"K-{n}" for n in numbers(rng, MULTI_HOP_CHAINS, digits=3)]
    codes = numbers(rng, MULTI_HOP_CHAINS, digits=6)
    facts = [WHERE.format(person=p, locker=k) for p, k in zip(people, lockers)]
    facts += [OPENS.format(locker=k, code=c) for k, c in zip(lockers, codes)]
    depths = [rng.random() for _ in facts]
    units = natural_units(rng, (length - MULTI_HOP_MAX_NEW_TOKENS) // 3 + 8)

    def filler(k: int, m: int) -> list[str]:
        return [" ".join(units[k].split()[:m])]

    return haystack_sample(
        tokenizer, task="multi_hop", length=length, seed=seed, max_new_tokens=MULTI_HOP_MAX_NEW_TOKENS,
        units=units[:-1], needles=facts, depths=depths,
        question=lambda context: (TEMPLATE.format(context=context, person=people[0]),
                                  ANSWER_PREFIX.format(person=people[0])),
        references=[lockers[0], codes[0]], filler=filler, max_filler=80,
    )
