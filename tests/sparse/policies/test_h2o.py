"""`h2o` (offload/sparse/policies/h2o.py): accumulated attention mass, evicting — a chunk not
selected at a step is never selected again; each step's mass adds to the selected chunks; a chunk
joining the body starts at the mean score of the head's live chunks."""

import pytest
import torch
from policy_checks import geometry

from offload.config import OffloadConfig
from offload.sparse import SparseConfig
from offload.sparse.policies.h2o import H2O
from offload.tiers.store import TieredKVStore


def test_h2o_evicts_for_good():
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, sparse=SparseConfig(budget=64, policy="h2o", whole_below=0))
    g = torch.Generator().manual_seed(0)
    st = TieredKVStore(1, 2, 16, torch.float32, "cpu", config=cfg)
    k, v = torch.randn(1, 2, 600, 16, generator=g), torch.randn(1, 2, 600, 16, generator=g)
    st.append(0, k, v)
    st.prefill_observer(0, torch.randn(1, 4, 8, 16, generator=g), k, 16**-0.5, 0.9)
    dropped = None
    for step in range(6):
        kv = torch.randn(2, 1, 2, 1, 16, generator=g)
        st.append(0, kv[0], kv[1])
        m = st.n_chunks(0)
        ids = st.selector.select(0, torch.randn(1, 4, 16, generator=g), m, st.layer_len(0))
        kept = [set(r.tolist()) for r in ids]
        if dropped is not None:
            assert all(not (kept[h] & dropped[h]) for h in range(2))
        dropped = [set(range(m)) - kept[h] for h in range(2)]
    st.close()


def test_mass_accumulates_and_new_chunks_start_at_the_live_mean():
    n_kv, c, d, m = 2, 4, 8, 6
    state = H2O().start(geometry(n_kv, d, c))
    state.add(0, 0, torch.randn(n_kv, m * c, d))
    mass = torch.rand(1, n_kv, m * c + 3, generator=torch.Generator().manual_seed(0))
    state.observe(0, mass, m)
    base = mass[:, :, : m * c].reshape(1, n_kv, m, c).sum(-1)
    q = torch.randn(1, 2 * n_kv, d)
    torch.testing.assert_close(state.scores(0, q, m, 3, 1.0, None), base)
    idx = torch.tensor([[[0, 2, 5], [1, 2, 3]]])  # [B, Hkv, k]
    state.chose(0, idx, m)
    s = state.scores(0, q, m, 3, 1.0, None)
    for h in range(n_kv):
        for j in range(m):
            assert (s[0, h, j] == float("-inf")) == (j not in idx[0, h].tolist())
    state.attended(0, idx[0], torch.full((n_kv, 3), 0.5))  # [R, k] ids and masses
    s = state.scores(0, q, m, 3, 1.0, None)
    for h in range(n_kv):
        for j in idx[0, h].tolist():
            assert float(s[0, h, j]) == pytest.approx(float(base[0, h, j]) + 0.5, abs=1e-6)
    state.add(0, m, torch.randn(n_kv, c, d))  # joins at the mean of the live chunks
    s = state.scores(0, q, m + 1, 3, 1.0, None)
    live = s[0, :, :m].masked_fill(s[0, :, :m] == float("-inf"), 0).sum(-1) / 3
    torch.testing.assert_close(s[0, :, m], live)
