"""Structured extraction, the Text2JSON shape: six facts about one applicant scattered over natural
prose (depths spread evenly), and the answer fills a JSON object with all six fields. Scored per
field (the fraction of values recovered), so one lost field is one sixth of a sample. Every field is
a different far-away span, copied within one answer: where published selection methods lose most
(arXiv 2604.08426)."""

from __future__ import annotations

from .haystack import haystack_sample, natural_units, numbers, spread_depths
from .sample import Sample, make_rng

__all__ = ["json_extract", "JSON_FIELDS", "JSON_MAX_NEW_TOKENS"]

FIRST = ("Amara", "Bruno", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hiroshi", "Ingrid", "Joaquin")
LAST = ("Okonkwo", "Lindqvist", "Baptiste", "Vasquez", "Nakamura", "Petrovic", "Achterberg", "Moreau")
CITIES = ("Tbilisi", "Montevideo", "Reykjavik", "Windhoek", "Ulaanbaatar", "Asuncion", "Ljubljana",
          "Thimphu", "Paramaribo", "Vientiane")
EMPLOYERS = ("Quillfeather Labs", "Brightmoor Freight", "Kestrel Dynamics", "Tallowbrook Foods",
             "Northglen Optics", "Amberlane Textiles", "Corvid Analytics", "Saltmarsh Energy")
# field -> the sentence that states it
JSON_FIELDS = {
    "name": "The applicant's full name is {}.",
    "city": "The applicant lives in the city of {}.",
    "employer": "The applicant currently works for {}.",
    "badge": "The applicant's badge number is {}.",
    "phone": "The applicant's phone number is {}.",
    "account": "The applicant's account code is {}.",
}
TEMPLATE = (
    "Read the following text carefully.\n\n{context}\n\n"
    "Fill in a JSON object with the applicant's details from the text, with the keys {keys}."
)
ANSWER_PREFIX = '{{"name": "'
JSON_MAX_NEW_TOKENS = 96


def json_extract(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """`depth` is ignored: the six facts sit at 0, 1/5, ..., 1 of the haystack, in a shuffled order."""
    del depth
    rng = make_rng("json_extract", length, seed)
    badge, phone = numbers(rng, 1, 6)[0], numbers(rng, 1, 7)[0]
    values = {
        "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "city": rng.choice(CITIES),
        "employer": rng.choice(EMPLOYERS), "badge": badge, "phone": f"{phone[:3]}-{phone[3:]}",
        "account": f"AC-{numbers(rng, 1, 5)[0]}",
    }
    fields = list(JSON_FIELDS)
    rng.shuffle(fields)
    needles = [JSON_FIELDS[f].format(values[f]) for f in fields]
    units = natural_units(rng, (length - JSON_MAX_NEW_TOKENS) // 3 + 8)
    keys = ", ".join(JSON_FIELDS)

    def filler(k: int, m: int) -> list[str]:
        return [" ".join(units[k].split()[:m])]

    return haystack_sample(
        tokenizer, task="json_extract", length=length, seed=seed, max_new_tokens=JSON_MAX_NEW_TOKENS,
        units=units[:-1], needles=needles, depths=spread_depths(len(needles)),
        question=lambda context: (TEMPLATE.format(context=context, keys=keys), ANSWER_PREFIX.format()),
        references=[values[f] for f in JSON_FIELDS], filler=filler, max_filler=80,
    )
