"""`explain`: where a sparse config parts from exact attention, and how much of the answer's source
it failed to read. A chunk policy at 8 tokens (less than one 16-token chunk) reads nothing but sinks
and window, so without a rest it loses a 1k log lookup (computed here, not assumed); a budget
covering the context loses nothing."""

import dataclasses

import pytest

from offload.config import SparseConfig
from offload.eval.explain import divergence, explain_step, format_explanation, source_span
from offload.eval.replay import Prefilled, greedy_many
from offload.eval.tasks import generate_sample


@pytest.fixture(scope="module")
def case(model):
    sample = generate_sample("log_1key", model.tokenizer, 1024, "0:0", 0.0)  # a sample exact attention answers
    ids = model.encode(sample.prompt)
    pre = Prefilled.capture(model, ids)
    answer = greedy_many([model], pre, 12, model.eos_ids)[0]
    yield sample, ids, pre, answer
    pre.close()


def _with(model, policy, budget, rest="k4v2"):
    sparse = SparseConfig(budget=budget, policy=policy, rest=rest)
    return dataclasses.replace(model, config=model.config.replace(sparse=sparse))


def test_source_span_is_the_value_tokens(model, case):
    sample, ids, _, _ = case
    a, b = source_span(model.tokenizer, sample, sample.references[0])
    assert model.tokenizer.decode(ids[a:b]).strip() == sample.references[0]


def test_a_budget_covering_the_context_never_diverges(model, case):
    _, ids, pre, answer = case
    assert divergence(model, _with(model, "token", len(ids)), pre, answer) is None


def test_a_starved_selection_is_explained(model, case):
    sample, ids, pre, answer = case
    assert sample.references[0] in model.tokenizer.decode(answer)  # exact attention answers it
    starved = _with(model, "bound", 8, rest=None)  # what the selection reads: no rest behind it
    step = divergence(model, starved, pre, answer)
    assert step is not None and step >= 1  # step 0 is the exact prefill's
    e = explain_step(starved, pre, answer, step, source_span(model.tokenizer, sample, sample.references[0]))
    assert e.wanted == answer[step] and e.got != e.wanted
    n_layers, n_heads = model.text_config.num_hidden_layers, model.text_config.num_attention_heads
    assert len(e.heads) == n_layers * n_heads
    whole = [h for h in e.heads if h.row_budget is None]  # layers read whole keep everything
    assert all(h.captured == 1.0 for h in whole)
    lost = e.lost_by_cause()
    assert sum(lost.values()) > 0.5 and max(lost, key=lost.get) == "budget"  # 0 chunks: a budget loss
    assert all(0 <= h.captured <= 1 + 1e-6 and 0 <= h.recall <= 1 + 1e-6 for h in e.heads)
    text = format_explanation(e, model.tokenizer)
    assert f"answer token {step}" in text and "budget" in text
    with pytest.raises(Exception, match="prefill"):
        explain_step(starved, pre, answer, 0, (0, 1))
