"""1k smoke run of every task, 1 sample each, `full` (HF generate) vs `dense` (offload, all KV): the same
answer token for token, hence the same scores. Also the JSON file the CLI writes.

Answers are capped at 24 tokens so the file runs in minutes on 2 cores: the 1k prefill (where dense
and full could part ways) is whole; answers are scored as far as they go."""

import json

import pytest

from offload.eval.modes import parse_modes
from offload.eval.report import JsonWriter, format_table, summarize
from offload.eval.runner import run_eval
from offload.eval.tasks import TASKS


@pytest.fixture(scope="module")
def smoke(model, hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "smoke.json"
    writer = JsonWriter(str(path), {"command": "test"})
    records = run_eval(model, tasks=list(TASKS), lengths=[1024], modes=parse_modes("full,dense"),
                       samples=1, seed=0, reference=hf_model, max_new_tokens=24, progress=False,
                       on_record=writer)
    return records, path


def test_every_cell_ran(smoke):
    records, _ = smoke
    assert len(records) == len(TASKS) * 1 * 2
    for r in records:
        assert 0.0 <= r.score <= 1.0 and len(r.tokens) <= 24
        assert r.n_prompt_tokens + TASKS[r.task].max_new_tokens <= 1024


def test_dense_equals_full(smoke):
    records, _ = smoke
    by = {(r.task, r.index, r.mode): r for r in records}
    for task in TASKS:
        for i in range(1):
            full, dense = by[(task, i, "full")], by[(task, i, "dense")]
            assert dense.tokens == full.tokens, (task, i, full.prediction, dense.prediction)
            assert dense.score == full.score
    cells = summarize(records)
    assert all(cells[(t, 1024, "dense")] == cells[(t, 1024, "full")] for t in TASKS)
    print("\n" + format_table(records))


def test_json_holds_every_answer(smoke):
    records, path = smoke
    doc = json.loads(path.read_text())
    assert len(doc["records"]) == len(records)
    assert {c["task"] for c in doc["cells"]} == set(TASKS)
