"""Selection policies and the attention-recall measurement on real text."""

from fractions import Fraction

import pytest
import torch

from offload.eval.policies import (
    FullPolicy,
    WindowPolicy,
    fixed_mask,
    get_policy,
    policy_names,
    selection_mask,
)
from offload.eval.recall import attention_recall, capture_qk, format_recall_table, natural_ids
from offload.eval.sparse_policies import StorePolicy
from offload.sparse.policies.token import Token


class OraclePolicy:
    """Test-only: the `budget` tokens (outside sinks + window) with the most exact attention mass of
    the KV head's query group. No policy can keep more mass at the same budget."""

    name = "test_oracle"
    respects_budget = True

    def __init__(self, sinks=4, window=64):
        self.sinks, self.window = sinks, window

    def select(self, layer, query, keys, budget):
        n_kv, t, _ = keys.shape
        g = query.shape[0] // n_kv
        logits = torch.einsum("hd,htd->ht", query, keys.repeat_interleave(g, 0)) * query.shape[-1] ** -0.5
        mass = torch.softmax(logits, -1).view(n_kv, g, t).sum(1)
        mass[fixed_mask(n_kv, t, self.sinks, self.window)] = -1
        return mass.topk(min(budget, t), dim=-1).indices


def test_registry():
    """The harness's names: its baselines, every runtime policy (one registry) and the
    measurement-only ones; each name gives a policy that answers to it."""
    from offload.sparse import policy_names as runtime_names

    names = set(policy_names())
    assert {"full", "window", "oracle", "token8"} <= names and set(runtime_names()) <= names
    assert isinstance(get_policy("window", sinks=2, window=8), WindowPolicy)
    for name in runtime_names():
        policy = get_policy(name, sinks=2, window=8)
        assert isinstance(policy, StorePolicy) and policy.name == name and (policy.sinks, policy.window) == (2, 8)
    with pytest.raises(ValueError, match="unknown selection policy 'nope'"):
        get_policy("nope")


def test_selection_mask_forms():
    m = selection_mask(torch.tensor([0, 2]), 3, 5)
    assert m.shape == (3, 5) and m[:, [0, 2]].all() and m.sum() == 6
    m = selection_mask(torch.tensor([[0], [1], [4]]), 3, 5)
    assert m.sum() == 3 and m[2, 4]
    assert selection_mask(torch.ones(5, dtype=torch.bool), 3, 5).all()
    with pytest.raises(ValueError):
        selection_mask(torch.tensor([5]), 3, 5)
    with pytest.raises(ValueError):
        selection_mask(torch.ones(4, dtype=torch.bool), 3, 5)


def test_window_policy_reads_sinks_plus_a_longer_window():
    keys = torch.zeros(3, 100, 8)
    sel = selection_mask(WindowPolicy(sinks=4, window=16).select(0, None, keys, 10), 3, 100)
    assert sel[0].nonzero().flatten().tolist() == list(range(74, 84))
    everything = WindowPolicy(sinks=4, window=16).select(0, None, keys, 1000)
    assert everything.tolist() == list(range(4, 84))
    assert FullPolicy().select(0, None, keys, 1).all()


def test_capture_is_exact_and_leaves_the_model_as_it_was(model, hf_model):
    ids = natural_ids(model.tokenizer, 96, seed=1)
    before = hf_model.config._attn_implementation
    with torch.inference_mode():
        want = hf_model(torch.tensor([ids])).logits[0, -1]
    captured, logits = capture_qk(hf_model, ids, 4)
    assert hf_model.config._attn_implementation == before
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)  # the capturing twin is exact
    with torch.inference_mode():
        assert torch.equal(hf_model(torch.tensor([ids])).logits[0, -1], want)
    n_layers = hf_model.config.num_hidden_layers
    assert sorted(captured) == list(range(n_layers))
    q, k, scaling = captured[0]
    cfg = hf_model.config
    assert q.shape == (cfg.num_attention_heads, 4, cfg.head_dim if hasattr(cfg, "head_dim") else 64)
    assert k.shape[:2] == (cfg.num_key_value_heads, 96) and scaling == pytest.approx(q.shape[-1] ** -0.5)


def test_recall_full_is_one_and_oracle_bounds_window(model, hf_model):
    res = attention_recall(hf_model, model.tokenizer, ["full", "window", OraclePolicy(sinks=4, window=16)],
                           [Fraction(1, 16), 10_000], n_context=384, n_steps=3, sinks=4, window=16)
    by = {(r.policy, r.budget): r for r in res}
    full = by[("full", "1/16")]
    assert len(full.per_layer) == hf_model.config.num_hidden_layers
    assert all(abs(x - 1.0) < 1e-5 for x in full.per_layer)
    win, ora = by[("window", "1/16")], by[("test_oracle", "1/16")]
    assert win.budget_tokens == ora.budget_tokens == 24
    assert all(0.0 < w <= o + 1e-6 <= 1.0 + 1e-5 for w, o in zip(win.per_layer, ora.per_layer))
    assert win.read == pytest.approx(4 + 16 + 24, abs=1e-6)
    # a budget covering the whole context keeps everything
    assert all(abs(x - 1.0) < 1e-5 for x in by[("window", "10000")].per_layer)
    table = format_recall_table(res)
    assert "window@1/16" in table and " mean " in table


class CountingToken(StorePolicy):
    """Test-only: `token` picking 16-token chunks that counts its selections (how often the harness
    asked for a fresh one)."""

    def __init__(self, sinks=4, window=64):
        super().__init__("test_counting", Token(unit="chunk"), 16, sinks=sinks, window=window)
        self.calls: list[int] = []

    def select(self, layer, query, keys, budget):
        self.calls.append(layer)
        return super().select(layer, query, keys, budget)


def test_recall_keeps_a_selection_for_select_every_steps(model, hf_model):
    """Steps at t = 385..387 add no chunk past the 16-token window: one selection per layer serves
    all three with select_every=3; a kept `full` still keeps everything (new tokens are window)."""
    n_layers = hf_model.config.num_hidden_layers
    counts = {}
    for every in (1, 3):
        counting = CountingToken(sinks=4, window=16)
        res = attention_recall(hf_model, model.tokenizer, [counting, "full"], [Fraction(1, 16)],
                               n_context=384, n_steps=3, sinks=4, window=16, select_every=every,
                               whole_below=0)  # fmt: skip
        counts[every] = len(counting.calls)
        full = next(r for r in res if r.policy == "full")
        assert all(abs(x - 1.0) < 1e-5 for x in full.per_layer)
    assert counts == {1: 3 * n_layers, 3: n_layers}


def test_recall_reads_whole_the_layers_no_chunk_choice_serves(model, hf_model):
    """As the store's Selector: at most max(1, L // 8) layers whose best chunk choice keeps less than
    whole_below are read whole (recall 1, every token read); the rest are chunk selections."""
    n_layers = hf_model.config.num_hidden_layers
    kw = dict(n_context=384, n_steps=2, sinks=4, window=16)
    chosen, = attention_recall(hf_model, model.tokenizer, ["token"], [Fraction(1, 16)], whole_below=0.5, **kw)
    none, = attention_recall(hf_model, model.tokenizer, ["token"], [Fraction(1, 16)], whole_below=0, **kw)
    all_, = attention_recall(hf_model, model.tokenizer, ["token"], [Fraction(1, 16)], whole_below=1.0, **kw)
    ones = [i for i, r in enumerate(chosen.per_layer) if r == 1.0]
    assert 1 <= len(ones) <= max(1, n_layers // 8) and 0 in ones  # SmolLM2's layer 0 is the diffuse one
    assert all(none.per_layer[i] < 1.0 for i in ones)
    assert all(chosen.per_layer[i] == none.per_layer[i] for i in range(n_layers) if i not in ones)
    assert len([r for r in all_.per_layer if r == 1.0]) == max(1, n_layers // 8)  # capped
    assert chosen.mean > none.mean and chosen.read > none.read


def test_recall_splits_budgets_by_the_prompts_attention(model, hf_model):
    """`oracle1+adaptive`: the store's adaptive split, from the prompt's last queries — every layer's
    budget checked by the harness (a policy over its layer's budget raises), the oracle keeps more
    on average than at the uniform split, tokens read stay ~ the same; unknown splits are refused."""
    from offload.eval.recall import split_name

    kw = dict(n_context=512, n_steps=2, sinks=4, window=16)
    uni, ada = attention_recall(hf_model, model.tokenizer, ["oracle1", "oracle1+adaptive"], [Fraction(1, 16)], **kw)
    assert ada.policy == "oracle1+adaptive" and ada.budget_tokens == uni.budget_tokens
    assert ada.mean > uni.mean
    assert ada.read == pytest.approx(uni.read, rel=0.02)  # the same total, split differently
    assert split_name("token+adaptive") == ("token", "adaptive") and split_name("token") == ("token", None)
    with pytest.raises(ValueError, match="adaptive"):
        split_name("token+squeeze")
