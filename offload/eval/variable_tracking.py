"""RULER's variable tracking (vt): one chain of 4 hops (`VAR ABCDE = 12345`, `VAR FGHIJ = VAR
ABCDE`, ...) hidden in noise, in order, at random depths; the answer lists all 5 variables that hold
the value. A multi-hop trace: each hop must be found from the previous one."""

from __future__ import annotations

from .haystack import haystack_sample, noise_units, uppercase_names
from .sample import Sample, make_rng

__all__ = ["variable_tracking", "VT_MAX_NEW_TOKENS", "VT_HOPS"]

TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above."
)
ANSWER_PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, {n} variables "
    "are assigned the value {query}, they are:"
)
VT_HOPS = 4
VT_MAX_NEW_TOKENS = 32


def variable_tracking(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """`depth` is ignored: the chain's statements sit at sorted random depths (RULER's placement)."""
    del depth
    rng = make_rng("vt", length, seed)
    names = uppercase_names(rng, VT_HOPS + 1)
    value = str(rng.randrange(10000, 100000))
    statements = [f"VAR {names[0]} = {value}."]
    statements += [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(VT_HOPS)]
    depths = sorted(rng.random() for _ in statements)

    def question(context: str) -> tuple[str, str]:
        return (
            TEMPLATE.format(context=context, query=value),
            ANSWER_PREFIX.format(n=len(names), query=value),
        )

    return haystack_sample(
        tokenizer,
        task="vt",
        length=length,
        seed=seed,
        max_new_tokens=VT_MAX_NEW_TOKENS,
        units=noise_units((length - VT_MAX_NEW_TOKENS) // 3 + 8),
        needles=statements,
        depths=depths,
        question=question,
        references=names,
    )
