"""Teacher-forced needle retrieval: which needle values a config predicts when fed the right answer.

Question: does sparse decode still reach the needles? `multi_needle`'s generated score answers it
badly on a small model — SmolLM2-135M with full attention lists ~1.5 of 8 values at 4k, repeating
one — so a ratio of two near-zero scores is mostly the model's noise. Here every config is fed the
reference answer, one line per needle in document order,

    ":\\n\\n- key1: value1\\n- key2: value2\\n..."

(the shape the model answers in), and at each value token we record whether the config's argmax is
that token. A value token is a retrieval: the key was just read, the digits exist only in the
needle far back in the prompt. Per config: value tokens right (of 8 values x their tokens) and
needles exact (every token of the value right). All configs of a sample decode in lockstep from one
prefill (`greedy_many`): the same prompt, the same forced tokens, one weight read per step.

The dense config (no budget) is the reference: offload's dense decode is exact attention, so its
numbers are full attention's; a sparse config's ratio to it is what selection loses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..chat_format import lead_ids
from .errors import EvalError
from .replay import Prefilled, greedy_many
from .sample import Sample

__all__ = ["ProbeResult", "forced_answer", "needle_probe"]

_KEY = re.compile(r"special magic numbers? for (.+?) is: ")


@dataclass(frozen=True)
class ProbeResult:
    """One config on one sample: value tokens predicted / total, needles exact / total."""

    name: str
    value_tokens: int
    value_total: int
    needles_exact: int
    needles_total: int


def forced_answer(tokenizer, sample: Sample) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """(prompt ids, forced answer ids, spans): spans[i] = [a, b) of needle i's value tokens in the
    forced ids. The answer lists every needle's key and value in document order (module doc)."""
    if sample.task != "multi_needle":
        raise EvalError(f"the needle probe reads multi_needle samples, got {sample.task!r}")
    keys = []
    for needle in sample.needles:
        m = _KEY.search(needle)
        if m is None:
            raise EvalError(f"no key in needle {needle!r}")
        keys.append(m.group(1))
    lines, spans_chars, pos = [], [], len(sample.prompt) + len(":\n\n")
    for key, value in zip(keys, sample.references):
        head = f"- {key}: "
        spans_chars.append((pos + len(head), pos + len(head) + len(value)))
        lines.append(head + value)
        pos += len(head) + len(value) + 1  # the newline
    text = sample.prompt + ":\n\n" + "\n".join(lines)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    prompt_ids = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    if ids[:n] != prompt_ids or offsets[n - 1][1] > len(sample.prompt):
        raise EvalError("the answer's first token merges with the prompt's last: cannot force it")
    spans = []
    for a, b in spans_chars:
        inside = [i - n for i, (s, e) in enumerate(offsets) if i >= n and s < b and e > a]
        if not inside or offsets[n + inside[0]][0] != a or offsets[n + inside[-1]][1] != b:
            raise EvalError(f"value at {a}:{b} is not whole tokens of the forced answer")
        spans.append((inside[0], inside[-1] + 1))
    return lead_ids(tokenizer, sample.prompt) + prompt_ids, ids[n:], spans


def needle_probe(models: dict, sample: Sample) -> list[ProbeResult]:
    """Teacher-forced retrieval of `sample`'s needles under each config in `models` (name -> model,
    one set of weights with different configs), from one shared prefill."""
    names, configs = list(models), list(models.values())
    if not configs:
        raise EvalError("needle_probe needs at least one config")
    prompt_ids, forced, spans = forced_answer(configs[0].tokenizer, sample)
    pf = Prefilled.capture(configs[0], prompt_ids)
    try:
        picks = greedy_many(configs, pf, len(forced), forced=forced)
    finally:
        pf.close()
    out = []
    for name, pick in zip(names, picks):
        right = [[pick[i] == forced[i] for i in range(a, b)] for a, b in spans]
        out.append(ProbeResult(name, sum(map(sum, right)), sum(map(len, right)),
                               sum(all(r) for r in right), len(spans)))  # fmt: skip
    return out
