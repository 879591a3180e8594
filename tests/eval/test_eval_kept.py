"""Kept answers: counted per reference against exact attention, with Wilson's interval."""

import pytest

from offload.eval.kept import format_kept, kept_answers, lost_answers, reference_column, wilson
from offload.eval.runner import Record


def _rec(mode, policy, index, prediction, refs=("111", "222"), task="records_3key"):
    return Record(task=task, length=4096, mode=mode, policy=policy, index=index, seed=f"0:{index}",
                  depth=None, n_prompt_tokens=4000, score=0.0, prediction=prediction, references=refs,
                  tokens=(), seconds=0.0)  # fmt: skip


def test_wilson_interval_textbook_values():
    lo, hi = wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1
    lo, hi = wilson(19, 20)
    assert lo < 0.95 < hi
    assert wilson(95, 100)[1] - wilson(95, 100)[0] < hi - lo  # more samples, a narrower interval
    assert wilson(0, 0) == (0.0, 1.0)


def test_kept_counts_answers_the_reference_found():
    recs = [
        _rec("dense", None, 0, "111 and 222"), _rec("dense", None, 1, "111 only"),
        _rec("sparse@1/16", "token", 0, "111, then 999"),  # keeps 111, loses 222
        _rec("sparse@1/16", "token", 1, "111 and 222"),  # keeps 111, gains 222
        _rec("sparse@1/16", "token", 7, "111 and 222"),  # no reference answer for #7: not counted
    ]
    assert reference_column(recs) == "dense"
    k = kept_answers(recs)[("records_3key", 4096, "token@1/16")]
    assert (k.solved, k.kept, k.gained, k.samples) == (3, 2, 1, 2)
    assert k.fraction == pytest.approx(2 / 3)
    assert lost_answers(recs, "token@1/16") == [("records_3key", 4096, 0, "0:0", "222")]
    text = format_kept(recs)
    assert "2/3 0.67 [" in text and "+1" in text and "all" in text


def test_full_is_the_reference_when_present():
    recs = [_rec("full", None, 0, "111"), _rec("dense", None, 0, "111 222"),
            _rec("sparse@1/16", "token", 0, "222")]
    k = kept_answers(recs)
    assert k[("records_3key", 4096, "token@1/16")].kept == 0  # vs full: it found only 111
    assert k[("records_3key", 4096, "dense")].gained == 1
    with pytest.raises(ValueError, match="full or dense"):
        reference_column([_rec("sparse@1/16", "token", 0, "111")])
