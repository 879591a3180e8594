"""The chunk policies behind the eval harness's selection interface: registered, within budget, and
`bound` (an upper bound) finds an outlier key that a mean landmark hides."""

from fractions import Fraction

import torch

from offload.eval.policies import get_policy, policy_names, selection_mask
from offload.eval.recall import attention_recall
from offload.sparse.policy import SelectionPolicy

CHUNK = SelectionPolicy.chunk  # the chunk policies' default (16)

NAMES = ["bound", "token", "quest", "landmark", "snapkv", "h2o"]


def test_registered_and_within_budget():
    assert set(NAMES) <= set(policy_names())
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 900, 64, generator=g)
    for name in NAMES:
        p = get_policy(name, sinks=4, window=64)
        for t in (100, 700, 900):  # h2o/snapkv keep state across steps of one sequence
            sel = selection_mask(p.select(5, torch.randn(9, 64, generator=g), keys[:, :t], 200), 3, t)
            fixed = torch.zeros(3, t, dtype=torch.bool)
            fixed[:, :4] = fixed[:, max(0, t - 64) :] = True
            assert int((sel & ~fixed).sum(-1).max()) <= 200, name


def test_bound_finds_an_outlier_key_that_the_landmark_hides():
    g = torch.Generator().manual_seed(1)
    d, t = 64, 4 + 64 + 10 * CHUNK
    keys = torch.randn(1, t, d, generator=g) * 0.3
    needle = torch.zeros(d)
    needle[7] = 12.0
    keys[0, 4 + 3 * CHUNK + CHUNK // 2 + 1] = needle  # one key in chunk 3 that matches the query
    keys[0, 4 + 3 * CHUNK : 4 + 4 * CHUNK, 7] -= 12.0 / CHUNK  # chunk 3's mean along e7 stays ~0
    q = (needle / 12.0 * 4.0).expand(1, d).clone()
    budget = 2 * CHUNK
    bound = selection_mask(get_policy("bound").select(0, q, keys, budget), 1, t)
    landmark = selection_mask(get_policy("landmark").select(0, q, keys, budget), 1, t)
    assert bound[0, 4 + 3 * CHUNK + CHUNK // 2 + 1] and not landmark[0, 4 + 3 * CHUNK + CHUNK // 2 + 1]


def test_attention_recall_runs_every_policy(model, hf_model):
    res = attention_recall(hf_model, model.tokenizer, NAMES + ["window"], [Fraction(1, 4)],
                           n_context=384, n_steps=2)  # fmt: skip
    by = {r.policy: r.mean for r in res}
    assert all(0.0 < v <= 1.0 + 1e-6 for v in by.values())
    assert by["bound"] >= by["window"] - 0.05  # query-aware selection is not worse than recency
