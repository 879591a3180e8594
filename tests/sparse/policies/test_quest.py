"""`quest` (offload/sparse/policies/quest.py): per-channel key min/max per chunk; its score bounds the
chunk's best q.k (invariant 5), on random keys and on SmolLM2's real keys."""

import pytest
import torch
from hypothesis import given, settings
from policy_checks import RANDOM_KEYS, check_bound_on_random_keys, check_bound_on_real_keys, geometry, same_summaries

from offload.sparse.policies.quest import Quest


def test_chunks_added_together_equal_chunks_added_one_by_one():
    same_summaries(Quest(), lambda s, m: [s.buf[b][0, :, :, :m] for b in ("lo", "hi")])


@settings(max_examples=30, deadline=None)
@given(**RANDOM_KEYS)
def test_bound_on_random_keys(**case):
    check_bound_on_random_keys(Quest(), **case, any_basis=False)


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
