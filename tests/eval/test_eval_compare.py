"""bench/eval_compare.py: runs of different policies compared on the samples they share."""

import json

import pytest
from bench_scripts import load_bench


@pytest.fixture(scope="module")
def compare():
    return load_bench("eval_compare")


def _rec(mode, policy, index, tokens, score):
    return {"task": "log_1key", "length": 4096, "mode": mode, "policy": policy, "index": index, "seed": f"0:{index}",
            "depth": None, "n_prompt_tokens": 4000, "score": score, "prediction": "x" if score else "y", "references": ["x"],
            "tokens": tokens, "seconds": 1.0}  # fmt: skip


def test_shared_samples_dense_once_and_kept_table(compare, tmp_path, capsys):
    a = [_rec("dense", None, i, [1, i], 1.0) for i in range(4)] + [_rec("sparse@1/16", "token", i, [1, i], 1.0)
                                                                   for i in range(4)]  # fmt: skip
    b = [_rec("dense", None, i, [1, i], 1.0) for i in range(2)] + [_rec("sparse@1/16", "quest/none", i, [9], 0.0)
                                                                   for i in range(2)]  # fmt: skip
    recs = compare.common([a, b], None)
    assert sorted((r["mode"], r["index"]) for r in recs if r["mode"] == "dense") == [("dense", 0), ("dense", 1)]
    assert len(recs) == 2 + 2 + 2  # dense once, each policy on samples 0 and 1
    assert len(compare.common([a, b], 1)) == 3
    paths = []
    for name, recs_ in (("a", a), ("b", b)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"meta": {}, "records": recs_}))
        paths.append(str(p))
    assert compare.main(paths) == 0
    out = capsys.readouterr().out
    assert "2/2 1.00" in out and "0/2 0.00" in out and "2 samples common to 2 runs" in out


def test_runs_whose_dense_answers_differ_are_refused(compare, tmp_path, capsys):
    a = [_rec("dense", None, 0, [1, 2], 1.0)]
    b = [_rec("dense", None, 0, [1, 3], 0.0)]
    with pytest.raises(ValueError, match="not the same samples"):
        compare.common([a, b], None)
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"meta": {}, "records": a}))
    q = tmp_path / "b.json"
    q.write_text(json.dumps({"meta": {}, "records": b}))
    assert compare.main([str(p), str(q)]) == 2 and "differ" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "missing.json")]) == 2
