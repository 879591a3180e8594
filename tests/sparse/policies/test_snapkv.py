"""`snapkv` (offload/sparse/policies/snapkv.py): static scores, the attention mass the prompt's last
queries paid each chunk (summed over the chunk and the query group); chunks decoded later are always
kept; before any prefill statistics, recency."""

import dataclasses

import torch
from policy_checks import geometry

from offload.sparse.policies.snapkv import KEEP, SnapKV

N_KV, C, D, SINKS = 2, 4, 8, 3


def _state(m=5):
    geo = dataclasses.replace(geometry(N_KV, D, C), sinks=SINKS)
    state = SnapKV().start(geo)
    keys = torch.randn(N_KV, m * C, D)
    state.add(0, 0, keys)
    return state


def test_scores_are_the_prompts_mass_per_chunk_then_kept_decoded_chunks():
    m = 5
    state = _state(m)
    q = torch.randn(1, 2 * N_KV, D)
    assert torch.equal(state.scores(0, q, m, 2, 1.0, None), torch.arange(m).float().expand(1, N_KV, m))  # recency
    g = torch.Generator().manual_seed(0)
    mass = torch.rand(1, N_KV, SINKS + m * C + 7, generator=g)  # sinks, body, window
    state.observe(0, mass, m)
    want = mass[:, :, SINKS : SINKS + m * C].reshape(1, N_KV, m, C).sum(-1)
    torch.testing.assert_close(state.scores(0, q, m, 2, 1.0, None), want)
    state.add(0, m, torch.randn(N_KV, C, D))  # a chunk decoded after the prompt: kept before any other
    s = state.scores(0, q, m + 1, 2, 1.0, None)
    assert (s[..., m] == KEEP).all() and torch.equal(s[..., :m], want)
    assert torch.equal(state.scores(0, torch.randn(1, 2 * N_KV, D), m + 1, 2, 1.0, None), s)  # static


def test_state_round_trips():
    m = 5
    state = _state(m)
    state.observe(0, torch.rand(1, N_KV, SINKS + m * C + 2), m)
    again = _state(m)
    again.load_state_dict(state.state_dict())
    q = torch.randn(1, 2 * N_KV, D)
    assert again.observed == [True]
    assert torch.equal(again.scores(0, q, m, 2, 1.0, None), state.scores(0, q, m, 2, 1.0, None))
