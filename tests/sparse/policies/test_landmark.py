"""`landmark` (offload/sparse/policies/landmark.py): the chunk's mean key; score = the best q.mean over
the KV head's group. An estimate, not a bound: an outlier key is averaged away."""

import torch
from policy_checks import best_dot, chunk_scores, geometry, same_summaries, summarized

from offload.sparse.policies.landmark import Landmark


def test_chunks_added_together_equal_chunks_added_one_by_one():
    same_summaries(Landmark(), lambda s, m: [s.buf["mean"][0, :, :, :m]])


def test_score_is_the_best_dot_with_the_mean_key():
    g = torch.Generator().manual_seed(0)
    n_kv, m, c, d, group = 2, 5, 4, 16, 3
    keys = torch.randn(n_kv, m, c, d, generator=g)
    q = torch.randn(1, n_kv * group, d, generator=g)
    got = chunk_scores(summarized(Landmark(), keys), 0, q, m)[0]  # [Hkv, m]
    want = best_dot(q, keys.mean(2, keepdim=True), n_kv)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_an_outlier_key_is_averaged_away():
    """One key in chunk 1 matches the query; the chunk's mean does not: the landmark ranks it below
    a chunk of mildly aligned keys (what `bound`'s box and `token`'s sketches do not do)."""
    n_kv, m, c, d = 1, 3, 8, 16
    keys = torch.zeros(n_kv, m, c, d)
    keys[0, 1, 3, 7] = 12.0  # the needle
    keys[0, 1, :, 7] -= 12.0 / c  # chunk 1's mean along e7 stays ~0
    keys[0, 2, :, 7] = 1.0  # chunk 2: every key a little aligned
    q = torch.zeros(1, 1, d)
    q[0, 0, 7] = 1.0
    score = chunk_scores(summarized(Landmark(), keys), 0, q, m)[0, 0]
    assert best_dot(q, keys, n_kv)[0].argmax() == 1 and score.argmax() == 2


def test_summary_bytes():
    policy, n_kv, chunks, d = Landmark(), 2, 40, 64
    state = policy.start(geometry(n_kv, d, policy.chunk, capacity=chunks))
    assert state.nbytes / (chunks * policy.chunk * n_kv) == policy.summary_bytes(d, policy.chunk, 4)
