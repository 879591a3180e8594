"""`bound` (offload/sparse/policies/bound.py): a low-rank box per chunk. Invariant 5: its chunk score
is an upper bound of max over the chunk's keys of q.k, on random keys (hypothesis, any basis) and on
SmolLM2's real post-RoPE keys captured through the store after a prefill; its summary stays within
1/8 of the KV bytes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_checks import (
    RANDOM_KEYS,
    check_bound_on_random_keys,
    check_bound_on_real_keys,
    geometry,
    same_summaries,
)

from offload.errors import ConfigError
from offload.sparse.policies.bound import Bound


def test_chunks_added_together_equal_chunks_added_one_by_one():
    same_summaries(Bound(rank=8), lambda s, m: [s.buf[b][0, :, :, :m] for b in ("lo", "hi", "res")])


@settings(max_examples=40, deadline=None)
@given(rank=st.integers(1, 12), **RANDOM_KEYS)
def test_bound_on_random_keys(rank, **case):
    check_bound_on_random_keys(Bound(rank=rank), **case)


def test_bound_on_real_keys(model):
    check_bound_on_real_keys(model, Bound(rank=16))


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim, rank", [(64, 16), (128, 32)])
def test_summary_is_at_most_an_eighth_of_the_kv(head_dim, rank, kv_dtype):
    """Issue budget: summary bytes per token <= 1/8 of K+V bytes per token (bf16, or the fp32 KV of
    CPU runs) at the policy's own chunk; the per-layer basis is counted apart (it does not grow
    with context). The state's bytes are what summary_bytes (the memory plan's figure) says."""
    policy, n_kv, chunks = Bound(rank=rank), 2, 40
    c = policy.chunk
    assert c == 16
    state = policy.start(geometry(n_kv, head_dim, c, capacity=chunks, kv_dtype=kv_dtype))
    per_token = (state.nbytes - state.basis.nbytes) / (chunks * c * n_kv)
    assert per_token <= 2 * head_dim * kv_dtype.itemsize / 8
    assert per_token == policy.summary_bytes(head_dim, c, kv_dtype.itemsize)


@pytest.mark.parametrize("rank", [0, -1, 2.0, True, None])
def test_bad_rank(rank):
    with pytest.raises(ConfigError, match="rank"):
        Bound(rank=rank)
