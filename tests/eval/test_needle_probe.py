"""The teacher-forced needle probe (offload.eval.needle_probe): the forced answer names each needle's
value as whole tokens, the dense config's picks are full attention's (HF forward over prompt +
answer), a budget that covers the context equals dense, and bad samples are refused."""

import dataclasses

import pytest
import torch

from offload.eval import EvalError
from offload.eval.needle_probe import forced_answer, needle_probe
from offload.eval.runner import plan_samples
from offload.sparse import SparseConfig

LENGTH = 1024


@pytest.fixture(scope="module")
def sample(model):
    return plan_samples("multi_needle", model.tokenizer, LENGTH, 1, 0)[0]


def test_forced_answer_spans_are_the_values(model, sample):
    tok = model.tokenizer
    prompt_ids, forced, spans = forced_answer(tok, sample)
    assert prompt_ids == tok(sample.prompt, add_special_tokens=False)["input_ids"]
    assert len(spans) == len(sample.references) == 8
    for (a, b), value in zip(spans, sample.references):
        assert tok.decode(forced[a:b]).strip() == value
    text = tok.decode(forced)
    assert text.startswith(":\n\n- ") and text.count("\n- ") == 8
    # keys in document order, each on the line of its own value
    for needle, value in zip(sample.needles, sample.references):
        key = needle.split(" for ", 1)[1].split(" is:", 1)[0]
        assert f"- {key}: {value}" in text


def test_other_tasks_are_refused(model):
    niah = plan_samples("niah_single_1", model.tokenizer, LENGTH, 1, 0)[0]
    with pytest.raises(EvalError, match="multi_needle"):
        forced_answer(model.tokenizer, niah)
    with pytest.raises(EvalError, match="at least one"):
        needle_probe({}, niah)


def test_dense_is_full_attention_and_whole_budget_is_dense(model, hf_model, sample):
    prompt_ids, forced, spans = forced_answer(model.tokenizer, sample)
    whole = dataclasses.replace(model, config=model.config.replace(sparse=SparseConfig(budget=4 * LENGTH, policy="token")))
    small = dataclasses.replace(model, config=model.config.replace(sparse=SparseConfig(budget=32, policy="token")))
    dense, covered, sparse = needle_probe({"dense": model, "whole": whole, "small": small}, sample)
    # the reference: one HF forward over prompt + forced answer; the logits at position p predict p + 1
    ids = torch.tensor([prompt_ids + forced])
    with torch.inference_mode():
        picks = hf_model(ids).logits[0, len(prompt_ids) - 1 : -1].argmax(-1).tolist()
    right = [[picks[i] == forced[i] for i in range(a, b)] for a, b in spans]
    assert (dense.value_tokens, dense.needles_exact) == (sum(map(sum, right)), sum(all(r) for r in right))
    assert dense.value_total == sum(b - a for a, b in spans) and dense.needles_total == 8
    assert dataclasses.replace(covered, name="dense") == dense  # invariant 1: budget >= context is dense
    assert sparse.value_total == dense.value_total and 0 <= sparse.value_tokens <= sparse.value_total
    assert dense.value_tokens > dense.value_total // 2  # the model does read the needles at 1k
