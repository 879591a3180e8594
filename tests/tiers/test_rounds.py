"""Exact attention in rounds (offload/tiers/rounds.py, through `TieredKVStore.attend(select=...)`):
a token selection with padding (-1) is exact over each head's own tokens, in one round or in several
when the chunks that hold them do not fit the layer's GPU slots; an id past the body is an error."""

import pytest
import torch

from offload import OffloadConfig
from offload.sparse import SparseConfig
from offload.sparse.policies.token import Token
from offload.tiers.store import TieredKVStore


@pytest.mark.parametrize("slots", [None, 3], ids=["resident", "rounds"])
def test_a_token_selection_with_padding_is_exact_over_its_tokens(slots):
    per_chunk = 2 * 2 * 16 * 16 * 4
    sparse = SparseConfig(budget=0.25, policy=Token(rank=4), whole_below=0)
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, sparse=sparse,
                        hot_set_bytes=None if slots is None else slots * 4 * per_chunk)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    st = TieredKVStore(4, 2, 16, torch.float32, "cpu", config=cfg)
    for layer in range(4):
        k, v = torch.randn(1, 2, 600, 16, generator=g), torch.randn(1, 2, 600, 16, generator=g)
        st.append(layer, k, v)
    assert st.selector.tokens
    if slots is not None:
        assert st.slot_budget(1) == slots
    lay, n = st.layout, st.layer_len(1)
    m = st.n_chunks(1)
    select = torch.tensor([[5, 17, 18, 3 * 16 + 15, m * 16 - 1, -1], [0, 40, -1, 41, 100, -1]])
    k, v = st.read_layer(1)
    q = torch.randn(1, 4, 1, 16, generator=g)
    out = st.attend(1, q, 0.25, select=select)
    for head in range(4):
        kv = head // 2
        keep = torch.zeros(n, dtype=torch.bool)
        keep[: lay.sinks] = keep[lay.chunk_start(m) :] = True
        keep[lay.sinks + select[kv][select[kv] >= 0]] = True
        p = torch.softmax((k[0, kv] @ q[0, head, 0] * 0.25).masked_fill(~keep, float("-inf")), -1)
        torch.testing.assert_close(out[0, 0, head], p @ v[0, kv], atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError, match="token"):
        st.attend(1, q, 0.25, select=torch.tensor([[m * 16]] * 2))
    st.close()
