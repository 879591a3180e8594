"""One prefill replayed into many store configs (offload.eval.replay), and the batched decode of
several configs at once (`Engine.decode_rows`): both must give what each config gives on its own."""

import dataclasses

import pytest
import torch

from offload.engine import Engine
from offload.eval.recall import natural_ids
from offload.eval.replay import Prefilled, greedy_continue, greedy_many
from offload.sparse import SparseConfig

N_PROMPT, N_NEW = 400, 6


@pytest.fixture(scope="module")
def prompt_ids(model):
    return natural_ids(model.tokenizer, N_PROMPT, seed=3)


def _direct(model, ids, n):
    """Greedy tokens of `model.config` with its own prefill (the engine, no replay)."""
    store = model.new_store()
    try:
        engine = Engine(model, store)
        logits, out = engine.prefill(ids), []
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = engine.decode(out[-1])
        return out
    finally:
        store.close()


def _configs(model):
    budgets = [("bound", "uniform", 64), ("snapkv", "squeeze", 64), ("h2o", "uniform", 48),
               ("quest", "uniform", 10_000)]  # fmt: skip
    return [dataclasses.replace(model, config=model.config.replace(sparse=SparseConfig(budget=b, policy=p, split=lb)))
            for p, lb, b in budgets]


def test_replay_equals_own_prefill(model, prompt_ids):
    """snapkv/h2o read the prefill statistics, squeeze the attention cosines: the replay must hand
    the store everything the engine's own prefill would."""
    pf = Prefilled.capture(model, prompt_ids)
    try:
        for m in _configs(model):
            tokens, picks = greedy_continue(m, pf, N_NEW)
            assert tokens == picks == _direct(m, prompt_ids, N_NEW), m.config.policy
    finally:
        pf.close()


def test_rows_decode_like_single_configs(model, prompt_ids):
    pf = Prefilled.capture(model, prompt_ids)
    try:
        ms = _configs(model)
        singles = [greedy_continue(m, pf, N_NEW)[0] for m in ms]
        assert greedy_many(ms, pf, N_NEW) == singles
        # a row that stops at its eos leaves the batch; the others go on unchanged
        stop = frozenset({singles[0][2]})
        many = greedy_many(ms, pf, N_NEW, eos=stop)
        for got, single in zip(many, singles):
            cut = next((i + 1 for i, t in enumerate(single) if t in stop), len(single))
            assert got == single[:cut]
    finally:
        pf.close()


def test_teacher_forcing_feeds_the_given_tokens(model, prompt_ids):
    pf = Prefilled.capture(model, prompt_ids)
    try:
        gen = torch.Generator().manual_seed(0)
        forced = [int(t) for t in torch.randint(100, 1000, (N_NEW,), generator=gen)]
        tokens, picks = greedy_continue(model, pf, N_NEW, forced=forced)
        assert tokens == forced
        assert picks[0] == int(pf.logits.argmax())  # the first pick comes from the prompt alone
        ms = _configs(model)[:2]
        assert greedy_many(ms, pf, N_NEW, forced=forced) == [greedy_continue(m, pf, N_NEW, forced=forced)[1]
                                                            for m in ms]
    finally:
        pf.close()


def test_decode_rows_rejects_unequal_stores(model, prompt_ids):
    a, b = model.new_store(), model.new_store()
    try:
        Engine(model, a).prefill(prompt_ids[:10])
        Engine(model, b).prefill(prompt_ids[:12])
        with pytest.raises(ValueError, match="same length"):
            Engine(model, a).decode_rows([1, 2], [a, b])
    finally:
        a.close(), b.close()
