"""Task generators: deterministic, the right length, needles present once at their depths, answers
recoverable from the prompt text alone."""

import re
from collections import Counter

import pytest

from offload.eval.corpus import natural_sentences, natural_text_source, vocabulary
from offload.eval.sample import GenerationError, count_tokens, insert_at_depths, join_units
from offload.eval.tasks import TASKS, generate_sample

LENGTHS = (1024, 4096, 8192)


@pytest.fixture(scope="module")
def tok(model):
    return model.tokenizer


@pytest.fixture(scope="module")
def samples(tok):
    """One sample per (task, length); single-needle depth 0.3."""
    return {(t, L): generate_sample(t, tok, L, "s0", 0.3) for t in TASKS for L in LENGTHS}


def test_corpus_is_offline_prose():
    sentences = natural_sentences()
    assert len(sentences) > 2000 and sum(len(s) for s in sentences) > 200_000
    assert all(">>>" not in s for s in sentences)
    assert len(vocabulary()) > 1000 and all(re.fullmatch(r"[a-z]{4,10}", w) for w in vocabulary())
    assert "standard-library" in natural_text_source()


@pytest.mark.parametrize("task", list(TASKS))
def test_deterministic_for_a_seed(tok, task, samples):
    again = generate_sample(task, tok, 1024, "s0", 0.3)
    assert again == samples[(task, 1024)]
    other = generate_sample(task, tok, 1024, "s1", 0.3)
    assert other.prompt != again.prompt and other.references != again.references


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", LENGTHS)
def test_length_within_two_percent(model, tok, samples, task, length):
    s = samples[(task, length)]
    budget = length - s.max_new_tokens  # RULER: prompt + answer fit the length
    assert s.n_prompt_tokens == count_tokens(tok, s.prompt) == len(model.encode(s.prompt))
    assert 0.98 * budget <= s.n_prompt_tokens <= budget
    assert s.prompt.endswith(s.answer_prefix)
    assert s.context in s.messages[0]["content"]


def _depth_of(context: str, needles, i: int) -> float:
    """Fraction of the needle-free haystack (characters) before needle i."""
    pos = context.index(needles[i])
    before = sum(len(n) for j, n in enumerate(needles) if j != i and context.index(n) < pos)
    return (pos - before) / (len(context) - sum(len(n) for n in needles))


@pytest.mark.parametrize("task", [t for t in TASKS if TASKS[t].single_needle]
                         + ["multi_needle", "vt", "records_3key", "multi_hop", "json_extract"])
@pytest.mark.parametrize("length", LENGTHS)
def test_needles_once_at_their_depth(tok, samples, task, length):
    s = samples[(task, length)]
    assert s.needles and len(s.needles) == len(s.depths)
    for i, needle in enumerate(s.needles):
        assert s.prompt.count(needle.strip()) == 1
        # needles go to the nearest unit boundary: a prose sentence is up to ~450 characters, a UUID
        # line ~150, of a haystack of ~2,500 characters at 1k
        tol = 0.05 if length == 1024 else 0.02
        assert abs(_depth_of(s.context, s.needles, i) - s.depths[i]) <= tol
    haystack = s.context
    for needle in s.needles:
        haystack = haystack.replace(needle, "")
    for ref in s.references:  # answers live in the needles only, never in the haystack around them
        assert ref not in haystack and any(ref in n for n in s.needles)


def test_multi_needle_depths_spread_evenly(samples):
    s = samples[("multi_needle", 4096)]
    assert s.depths == tuple(i / 7 for i in range(8))
    assert len(set(s.references)) == 8


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_single_needle_depth_extremes(tok, depth):
    s = generate_sample("passkey", tok, 2048, "d", depth)
    d = _depth_of(s.context, s.needles, 0)
    assert abs(d - depth) <= 0.01
    if depth == 0.0:
        assert s.context.startswith(s.needles[0])
    if depth == 1.0:
        assert s.context.endswith(s.needles[0])


# --- answers recoverable from the prompt text alone -------------------------------------------------


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_2", "niah_multikey_3"])
def test_niah_answer_from_text(samples, task):
    s = samples[(task, 4096)]
    key = re.search(r"special magic \w+ for (\S+) mentioned", s.messages[0]["content"]).group(1)
    found = re.findall(rf"for {re.escape(key)} is: (\S+)\.", s.context)
    assert found == list(s.references)


def test_passkey_answer_from_text(samples):
    s = samples[("passkey", 8192)]
    assert re.findall(r"The pass key is (\d{5})\.", s.context) == list(s.references)


def test_vt_answer_from_text(samples):
    s = samples[("vt", 4096)]
    value = re.search(r"assigned the value (\d+) in the text", s.messages[0]["content"]).group(1)
    holds = {}
    for name, rhs in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", s.context):
        holds[name] = holds.get(rhs[4:]) if rhs.startswith("VAR ") else rhs
    assert sorted(n for n, v in holds.items() if v == value) == sorted(s.references)
    assert len(s.references) == 5


@pytest.mark.parametrize("length", [1024, 8192])
def test_cwe_answer_from_text(samples, length):
    s = samples[("cwe", length)]
    counts = Counter(re.findall(r"\d+\. (\w+)", s.context))
    top = counts.most_common()
    assert {w for w, _ in top[:10]} == set(s.references)
    assert top[9][1] > top[10][1]  # a clear gap: 30 vs 3 (6 vs 1 below 4k)


@pytest.mark.parametrize("length", [1024, 8192])
def test_fwe_answer_from_text(samples, length):
    s = samples[("fwe", length)]
    top = Counter(s.context.split()).most_common()
    assert top[0][0] == "...."
    assert [w for w, _ in top[1:4]] == list(s.references)
    assert top[3][1] > top[4][1]


def test_multi_needle_answer_from_text(samples):
    s = samples[("multi_needle", 8192)]
    asked = re.search(r"numbers for (.+) mentioned in the provided text\?", s.messages[0]["content"]).group(1)
    keys = re.split(r", | and ", asked)
    assert len(keys) == 8
    found = [re.search(rf"for {re.escape(k)} is: (\d{{7}})\.", s.context).group(1) for k in keys]
    assert found == list(s.references)


# --- shared machinery --------------------------------------------------------------------------------


def test_insert_at_depths_keeps_order_and_units():
    units = [f"u{i}." for i in range(10)]
    out = insert_at_depths(units, ["A", "B", "C"], [0.0, 0.5, 1.0])
    assert [u for u in out if u.startswith("u")] == units
    assert out[0] == "A" and out[-1] == "C" and out.index("B") == 6
    assert join_units(["a.\n", "b.", "c."]) == "a.\nb. c."
    with pytest.raises(GenerationError):
        insert_at_depths(units, ["A"], [1.5])


def test_too_short_length_is_a_clear_error(tok):
    with pytest.raises(GenerationError, match="budget"):
        generate_sample("multi_needle", tok, 200, 0)


# --- extraction families (issue 22) --------------------------------------------------------------------


@pytest.mark.parametrize("task,pattern", [
    ("log_1key", r"session={key} code=(\d{{7}}) "),
    ("csv_1key", r"^{key},(\d{{7}}),"),
    ("jsonl_1key", r'"session": "{key}", "code": (\d{{7}}),'),
])
def test_records_answer_from_text(samples, task, pattern):
    s = samples[(task, 4096)]
    key = re.search(r"code of session (\S+)\?", s.messages[0]["content"]).group(1)
    assert re.findall(pattern.format(key=re.escape(key)), s.context, re.M) == list(s.references)
    assert s.answer_prefix.endswith(("code=", f"{key},", '"code": '))  # the answer starts the record
    assert len(re.findall(r"\d{7}", s.context)) > 80  # ~90 look-alike records around it at 4k


def test_records_3key_rotates_formats_and_asks_three(tok):
    shapes = []
    for i in range(3):
        s = generate_sample("records_3key", tok, 2048, f"0:{i}")
        keys = re.search(r"codes of sessions (.+)\?", s.messages[0]["content"]).group(1)
        keys = re.split(r", | and ", keys)
        assert len(keys) == 3 == len(s.references) and s.metric == "all"
        for key, value in zip(keys, s.references):
            assert re.search(rf"{re.escape(key)}\W.*{value}", s.context)
        shapes.append("log" if "session=" in s.context else "jsonl" if '{"session"' in s.context else "csv")
    assert shapes == ["log", "csv", "jsonl"]


def test_prose_fact_is_prose_with_one_passphrase(samples):
    s = samples[("prose_fact", 4096)]
    thing = re.search(r"passphrase for (.+)\?", s.messages[0]["content"]).group(1)
    assert re.findall(rf"passphrase for {re.escape(thing)} is (\w+ \w+),", s.context) == list(s.references)
    assert "The grass is green" not in s.context  # natural text, not RULER's noise


def test_multi_hop_needs_both_facts(samples):
    s = samples[("multi_hop", 4096)]
    person = re.search(r"does (\w+) keep", s.messages[0]["content"]).group(1)
    locker = re.search(rf"{person} keeps the spare key in locker (K-\d+)\.", s.context).group(1)
    code = re.search(rf"Locker {locker} opens with the combination (\d+)\.", s.context).group(1)
    assert list(s.references) == [locker, code]
    assert len(re.findall(r"opens with the combination", s.context)) == 4  # three other chains


def test_json_extract_fields_scattered(samples):
    from offload.eval.json_extract import JSON_FIELDS

    s = samples[("json_extract", 8192)]
    assert len(s.references) == len(JSON_FIELDS) == 6 and s.answer_prefix == '{"name": "'
    for field, value in zip(JSON_FIELDS, s.references):
        assert JSON_FIELDS[field].format(value) in s.context
    assert list(s.depths) == [i / 5 for i in range(6)]  # spread over the whole document


def test_completion_form_without_a_chat_template(tok):
    """A base model's tokenizer has no chat template: the prompt is the document, then the answer
    prefix on its own line — no chat markup."""
    import copy

    base = copy.deepcopy(tok)
    base.chat_template = None
    chat = generate_sample("log_1key", tok, 1024, "0:0", 0.5)
    plain = generate_sample("log_1key", base, 1024, "0:0", 0.5)
    assert "<|im_start|>" in chat.prompt and "<|im_start|>" not in plain.prompt
    assert plain.prompt.startswith("Below is a service log") and plain.prompt.endswith("\n\n" + plain.answer_prefix)
    assert plain.references == chat.references
    assert 0.98 * (1024 - plain.max_new_tokens) <= count_tokens(base, plain.prompt) <= 1024 - plain.max_new_tokens
