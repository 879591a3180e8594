"""`quest` (offload/sparse/policies/quest.py): per-channel key min/max per chunk; its score bounds the
chunk's best q.k (invariant 5), on random keys and on SmolLM2's real keys."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_checks import check_bound, check_bound_on_real_keys, geometry, same_summaries

from offload.sparse.policies.quest import Quest


def test_chunks_added_together_equal_chunks_added_one_by_one():
    same_summaries(Quest(), lambda s, m: [s.buf[b][0, :, :, :m] for b in ("lo", "hi")])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_kv=st.sampled_from([1, 3]),
    group=st.sampled_from([1, 3]),
    d=st.sampled_from([8, 64]),
    chunk=st.sampled_from([1, 4, 16]),
    m=st.integers(1, 6),
    spread=st.floats(0.01, 100.0),
    offset=st.floats(-10.0, 10.0),
)
def test_bound_on_random_keys(seed, n_kv, group, d, chunk, m, spread, offset):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_kv, m, chunk, d, generator=g) * spread + offset
    check_bound(Quest(), keys, torch.randn(1, n_kv * group, d, generator=g) * spread)


def test_bound_on_real_keys(model):
    check_bound_on_real_keys(model, Quest())


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float32])
def test_summary_is_at_most_an_eighth_of_the_kv(kv_dtype):
    policy, n_kv, chunks, d = Quest(), 2, 40, 64
    c = policy.chunk
    state = policy.start(geometry(n_kv, d, c, capacity=chunks, kv_dtype=kv_dtype))
    per_token = state.nbytes / (chunks * c * n_kv)
    assert per_token <= 2 * d * kv_dtype.itemsize / 8
    assert per_token == policy.summary_bytes(d, c, kv_dtype.itemsize)
