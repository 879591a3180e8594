"""RULER scorers on hand-made answers, and the results table / JSON file built from them."""

import json

import pytest

from offload.eval.report import JsonWriter, format_table, summarize
from offload.eval.runner import Record
from offload.eval.scoring import normalize_prediction, score, string_match_all, string_match_part


def test_string_match_all_is_the_fraction_found_ignoring_case():
    refs = ["1234567", "AbCdE", "uuid-1"]
    assert string_match_all("The numbers are 1234567, abcde and UUID-1.", refs) == 1.0
    assert string_match_all("only 1234567 here", refs) == pytest.approx(1 / 3)
    assert string_match_all("nothing", refs) == 0.0
    assert string_match_all("123456", ["1234567"]) == 0.0  # a prefix is not a match
    assert string_match_all("x 1234567 1234567", ["1234567", "1234567"]) == 1.0


def test_string_match_part_is_any():
    assert string_match_part("Paris, France", ["paris", "Lyon"]) == 1.0
    assert string_match_part("Berlin", ["paris", "Lyon"]) == 0.0


def test_multi_needle_partial_credit():
    refs = [f"{i}{i}{i}{i}{i}{i}{i}" for i in range(1, 9)]
    pred = "- a: 1111111\n- b: 2222222\n- c: 3333333\n- d: 4444444\n- e: 555555"
    assert string_match_all(pred, refs) == 0.5


def test_normalize_and_dispatch():
    assert normalize_prediction("  a\x00b\tc \n") == "a\nb\nc"
    assert score("ABC", ["abc"], "all") == score("ABC", ["abc"], "part") == 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        score("a", ["a"], "exact")
    with pytest.raises(ValueError, match="no references"):
        string_match_all("a", [])


def _rec(task, length, mode, index, s):
    return Record(task=task, length=length, mode=mode, policy=None, index=index, seed=f"0:{index}",
                  depth=None, n_prompt_tokens=length - 32, score=s, prediction="p", references=("r",),
                  tokens=(1, 2), seconds=0.1)


def test_table_and_json(tmp_path):
    recs = [
        _rec("passkey", 1024, "full", 0, 1.0), _rec("passkey", 1024, "dense", 0, 1.0),
        _rec("passkey", 1024, "full", 1, 0.0), _rec("passkey", 1024, "dense", 1, 0.0),
        _rec("vt", 1024, "full", 0, 0.0), _rec("vt", 1024, "dense", 0, 0.0),
        _rec("passkey", 2048, "full", 0, 1.0), _rec("passkey", 2048, "sparse@1/16", 0, 0.5),
    ]
    cells = summarize(recs)
    assert cells[("passkey", 1024, "full")] == (50.0, 2)
    table = format_table(recs)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "length", "n", "full", "dense", "x", "full", "sparse@1/16", "x", "full"]
    row = next(line for line in lines if line.startswith("passkey") and " 1k " in line).split()
    assert row == ["passkey", "1k", "2", "50.0", "50.0", "1.00"]
    row = next(line for line in lines if line.startswith("passkey") and " 2k " in line).split()
    assert row == ["passkey", "2k", "1", "100.0", "50.0", "0.50"]
    assert any(line.startswith("vt") and line.split()[3:6] == ["0.0", "0.0", "-"] for line in lines)
    path = tmp_path / "sub" / "out.json"
    writer = JsonWriter(str(path), {"command": "offload-eval"})
    for r in recs[:3]:
        writer(r)
        doc = json.loads(path.read_text())  # a complete document after every answer
        assert doc["meta"]["command"] == "offload-eval"
    assert len(doc["records"]) == 3 and doc["records"][0]["tokens"] == [1, 2]
    assert {(c["task"], c["mode"], c["n"]) for c in doc["cells"]} == {("passkey", "full", 2), ("passkey", "dense", 1)}
