"""The answers-vs-full table: identity of answer tokens and score ratios over matched prompts."""

from offload.eval.report import format_table, format_vs_full
from offload.eval.runner import Record


def _rec(mode, policy, index, tokens, score):
    return Record(task="passkey", length=4096, mode=mode, policy=policy, index=index, seed=f"0:{index}",
                  depth=None, n_prompt_tokens=4000, score=score, prediction="", references=("1",),
                  tokens=tuple(tokens), seconds=0.0)  # fmt: skip


def test_vs_full_counts_identical_answers_on_matched_prompts():
    recs = [
        _rec("full", None, 0, [1, 2], 1.0), _rec("full", None, 1, [3], 0.0),
        _rec("sparse@1/16", "quest", 0, [1, 2], 1.0), _rec("sparse@1/16", "quest", 1, [4], 1.0),
        _rec("sparse@1/16", "bound", 0, [1, 9], 0.0),
        _rec("sparse@1/16", "bound", 5, [1], 1.0),  # no full answer for index 5: not compared
    ]
    rows = {line.split()[1]: line.split() for line in format_vs_full(recs).splitlines()[1:]}
    assert rows["quest@1/16"][2:] == ["2", "0.50", "100.0", "50.0", "2.00"]
    assert rows["bound@1/16"][2:] == ["1", "0.00", "0.0", "100.0", "0.00"]
    assert "quest@1/16" in format_table(recs).splitlines()[0]


def test_vs_full_without_full_answers():
    assert "no answers" in format_vs_full([_rec("dense", None, 0, [1], 1.0)])
