"""Key -> value lookups in structured records: a service log, a CSV table, JSON lines.

Every line of the document is a record of the same shape (a session key, a 7-digit code and fields
around them); the asked records are lines like the others at their depths. One key asked
(`log_1key`, `csv_1key`, `jsonl_1key`: depth spread over the samples) or three at once
(`records_3key`: sorted random depths, the format rotating with the sample so each appears), scored
by the fraction of codes recovered. This is extraction from dense structure: the lines around the
answer look exactly like it, so selection must find the one key among hundreds of near-twins.
"""

from __future__ import annotations

from .haystack import distinct_word_keys, haystack_sample, natural_units, numbers, word_keys
from .sample import Sample, make_rng

__all__ = ["FORMATS", "RECORDS_MAX_NEW_TOKENS", "records_1key", "records_3key", "log_1key", "csv_1key",
           "jsonl_1key", "RECORDS_KEYS"]

CITIES = ("Tbilisi", "Montevideo", "Reykjavik", "Windhoek", "Ulaanbaatar", "Asuncion", "Ljubljana",
          "Nouakchott", "Thimphu", "Paramaribo", "Vientiane", "Podgorica")
SERVICES = ("auth", "billing", "search", "upload", "mailer", "gateway", "export", "scheduler")
LEVELS = ("INFO", "INFO", "INFO", "WARN", "DEBUG")
STATUSES = ("ok", "retry", "failed", "queued")

# format -> (document heading, record template, the start of the asked record: the answer prefix
# of one key); the heading (CSV: the header row) precedes the lines. The code follows the key.
FORMATS = {
    "log": ("Below is a service log, one request per line.\n\n",
            "2026-{month:02d}-{day:02d} {hh:02d}:{mm:02d}:{ss:02d} {level} [{service}] session={key} "
            "code={value} ms={ms}\n", "session={key} code="),
    "csv": ("Below is a table of sessions in CSV form.\n\nsession,code,city,status\n",
            "{key},{value},{city},{status}\n", "{key},"),
    "jsonl": ("Below are session records, one JSON object per line.\n\n",
              '{{"session": "{key}", "code": {value}, "city": "{city}", "status": "{status}"}}\n',
              '{{"session": "{key}", "code": '),
}
QUESTION = {1: "What is the code of session {keys}? Answer with the record's code.",
            3: "What are the codes of sessions {keys}? Copy their three records, one per line."}
RECORDS_KEYS = 3
RECORDS_MAX_NEW_TOKENS = {1: 24, 3: 64}


def _record(rng, fmt: str, key: str, value: str) -> str:
    return FORMATS[fmt][1].format(
        month=rng.randrange(1, 13), day=rng.randrange(1, 29), hh=rng.randrange(24), mm=rng.randrange(60),
        ss=rng.randrange(60), level=rng.choice(LEVELS), service=rng.choice(SERVICES), key=key,
        value=value, ms=rng.randrange(2, 900), city=rng.choice(CITIES), status=rng.choice(STATUSES),
    )


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _records(task: str, fmt: str, n_keys: int, tokenizer, length: int, seed, depths) -> Sample:
    rng = make_rng(task, length, seed)
    max_new = RECORDS_MAX_NEW_TOKENS[n_keys]
    asked = distinct_word_keys(rng, n_keys)
    n = (length - max_new) // 12 + 8  # a record is >= 12 tokens
    others = [k for k in word_keys(rng, n + 64) if not any(a in k or k in a for a in asked)][:n]
    values = numbers(rng, n_keys + n)
    needles = [_record(rng, fmt, k, v) for k, v in zip(asked, values)]
    units = [_record(rng, fmt, k, v) for k, v in zip(others, values[n_keys:])]
    heading, keys = FORMATS[fmt][0], _and(asked)

    # one key: the answer starts the asked record up to its code; several: the first record's start
    prefix = FORMATS[fmt][2].format(key=asked[0])

    def question(context: str) -> tuple[str, str]:
        return heading + context + "\n\n" + QUESTION[n_keys].format(keys=keys), prefix

    note = " ".join(natural_units(rng, 12)).split()

    def filler(k: int, m: int) -> list[str]:  # records are ~30 tokens: a closing note fits the rest
        return ["Note: " + " ".join(note[:m])]

    return haystack_sample(
        tokenizer, task=task, length=length, seed=seed, max_new_tokens=max_new, units=units,
        needles=needles, depths=depths(rng), question=question, references=values[:n_keys],
        filler=filler, max_filler=min(80, len(note)),
    )


def records_1key(fmt: str):
    """The single-key task of one format: `fn(tokenizer, length, seed, depth)`."""
    task = f"{fmt}_1key"

    def generate(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
        return _records(task, fmt, 1, tokenizer, length, seed,
                        lambda rng: [rng.random() if depth is None else depth])

    generate.__name__ = task
    return generate


log_1key, csv_1key, jsonl_1key = (records_1key(f) for f in FORMATS)


def records_3key(tokenizer, length: int, seed, depth: float | None = None) -> Sample:
    """Three keys asked at once, at sorted random depths; `depth` is ignored. The format follows
    the sample's seed (log, csv, jsonl in turn for seeds "s:0", "s:1", ...)."""
    del depth
    last = str(seed).rsplit(":", 1)[-1]
    index = int(last) if last.isdigit() else 0
    fmt = tuple(FORMATS)[index % len(FORMATS)]
    return _records("records_3key", fmt, RECORDS_KEYS, tokenizer, length, seed,
                    lambda rng: sorted(rng.random() for _ in range(RECORDS_KEYS)))
