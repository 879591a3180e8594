"""The sparse decode step (offload/tiers/decode_attention.py, `DecodeAttention`, through
`offload.attention.decode_attend`) against the exact rounds path given the same selection: with every
chunk resident, with misses fetched from host and disk, and when the selection's union outgrows the
layer's slots (fallback to rounds); the block table follows the manager through evictions; hits are
counted; h2o's masses agree between the paths; what it computes is softmax attention over sinks +
each head's selection + window, nothing else (without a rest); a budget covering the context is exact."""

import pytest
import torch

from offload import OffloadConfig
from offload.attention import decode_attend
from offload.sparse import SparseConfig, make_policy
from offload.sparse.policies.bound import Bound
from offload.sparse.policies.token import Token
from offload.tiers.store import TieredKVStore

L, HKV, D, C, N = 3, 2, 16, 8, 300


def _policy(name, unit="token"):
    if name == "token":
        return Token(rank=4, unit=unit)
    return Bound(rank=4) if name == "bound" else make_policy(name)


def _cfg(slots=None, host_chunks=None, policy="token", budget=64, **kw):
    per_chunk = 2 * HKV * C * D * 4
    hot = None if slots is None else slots * L * per_chunk
    host = None if host_chunks is None else max(1, host_chunks * per_chunk)
    # random keys: every layer is diffuse; whole layers off, so that every layer takes the step
    kw.setdefault("rest", None)  # the selection alone (the rest's merge: tests/sparse/test_rest.py)
    sparse = SparseConfig(budget=budget, policy=_policy(policy), whole_below=0, **kw)
    return OffloadConfig(kv_chunk=C, sinks=4, window=8, hot_set_bytes=hot, host_mem=host, sparse=sparse)


def _store(cfg, seed=0, n_layers=L):
    g = torch.Generator().manual_seed(seed)
    st = TieredKVStore(n_layers, HKV, D, torch.float32, "cpu", config=cfg)
    for layer in range(n_layers):
        k, v = torch.randn(1, HKV, N, D, generator=g), torch.randn(1, HKV, N, D, generator=g)
        st.append(layer, k, v)
        q_tail = torch.randn(1, 2 * HKV, 8, D, generator=g)  # drawn either way: dense and sparse get the same keys
        if st.prefill_observer is not None:
            st.prefill_observer(layer, q_tail, k, D**-0.5, 0.9)
    return st


def _check_table(st, layer):
    """The block table (`lookup`) agrees with residency, and each resident slot holds its chunk."""
    m = st.n_chunks(layer)
    slots = st.lookup(layer, torch.arange(m).view(1, -1))[0]
    k, v = st.read_layer(layer)
    lay = st.layout
    for c in range(m):
        assert (int(slots[c]) >= 0) == st.is_resident(layer, c)
        if st.is_resident(layer, c):
            gk, gv = st.pool.gather(slots[c : c + 1])  # [R, C, D]
            a = lay.chunk_start(c)
            assert torch.equal(gk, k[0, :, a : a + lay.chunk]) and torch.equal(gv, v[0, :, a : a + lay.chunk])


@pytest.mark.parametrize("policy", ["bound", "token", "quest", "snapkv"])
@pytest.mark.parametrize("slots,host", [(None, None), (20, 10), (5, None)],
                         ids=["resident", "misses-host-disk", "union-exceeds-slots"])  # fmt: skip
def test_step_equals_rounds_over_the_same_selection(policy, slots, host):
    st = _store(_cfg(slots, host, policy=policy))
    g = torch.Generator().manual_seed(1)
    k_sel = st.selector.chunk_budget(0, N)
    m = st.n_chunks(0)
    assert 0 < k_sel < m
    for step in range(4):
        for layer in range(L):
            q = torch.randn(1, 2 * HKV, 1, D, generator=g)
            chosen = st.selector.select(layer, q[:, :, 0], m, N, 0.3)  # [R, k]: what the step picks for q
            got = decode_attend(st, layer, q, 0.3, None)  # the step
            want = st.attend(layer, q, 0.3, select=chosen)  # rounds, the exact reference
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
            _check_table(st, layer)  # the device mirror agrees with the manager, evictions included
    stats = st.stats()
    if slots is None:
        assert stats["misses"] == 0 and stats["hits"] > 0  # counted on the device, no acquire
    else:
        assert stats["misses"] > 0
    if host is not None:
        assert stats["misses_disk"] > 0
    st.close()


@pytest.mark.parametrize("slots", [18, 6], ids=["fetch", "union-exceeds-slots"])
def test_step_through_decode_appends_matches_rounds(slots):
    """Chunks that join the body while decoding (hot adds that evict) keep the mirror in step."""
    st = _store(_cfg(slots, None, policy="bound"))
    ref = _store(_cfg(slots, None, policy="bound"))
    g = torch.Generator().manual_seed(2)
    for _ in range(2 * C + 3):
        q = torch.randn(1, 2 * HKV, 1, D, generator=g)
        for layer in range(L):
            k, v = torch.randn(1, HKV, 1, D, generator=g), torch.randn(1, HKV, 1, D, generator=g)
            st.append(layer, k, v)
            ref.append(layer, k, v)
            m, n = ref.n_chunks(layer), ref.layer_len(layer)
            chosen = ref.selector.select(layer, q[:, :, 0], m, n, 0.3)
            torch.testing.assert_close(decode_attend(st, layer, q, 0.3, None),
                                       ref.attend(layer, q, 0.3, select=chosen), atol=2e-6, rtol=1e-5)  # fmt: skip
    assert st.n_chunks(0) > (N - 12) // C  # chunks were added during decode
    _check_table(st, 0)
    st.close(), ref.close()


@pytest.mark.parametrize("slots", [None, 20, 5])
def test_h2o_masses_equal_between_step_and_rounds(slots):
    """h2o accumulates each step's attention mass per selected chunk: the step (block table) and the
    rounds fallback (union > slots) must add the same masses, so the evictions stay the same."""
    a, b = _store(_cfg(None, policy="h2o")), _store(_cfg(slots, policy="h2o"))
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        for layer in range(L):
            q = torch.randn(1, 2 * HKV, 1, D, generator=g)
            torch.testing.assert_close(decode_attend(a, layer, q, 0.3, None), decode_attend(b, layer, q, 0.3, None),
                                       atol=2e-6, rtol=1e-5)  # fmt: skip
    sa_, sb_ = a.selector.state, b.selector.state
    for layer in range(L):
        m = a.n_chunks(layer)
        torch.testing.assert_close(sa_.score[layer][..., :m], sb_.score[layer][..., :m], atol=1e-5, rtol=1e-5)
        assert torch.equal(sa_.alive[layer][..., :m], sb_.alive[layer][..., :m])
        assert int(sa_.alive[layer][..., :m].sum()) == HKV * a.selector.chunk_budget(layer, N)
    a.close(), b.close()


@pytest.mark.parametrize("policy", ["bound", "token"])
def test_budget_over_context_is_exact(policy):
    """A budget covering every chunk (every token) attends densely: bitwise the store without one."""
    dense = OffloadConfig(kv_chunk=C, sinks=4, window=8)
    outs = []
    for cfg in (dense, dense.replace(sparse=SparseConfig(budget=10**6, policy=_policy(policy)))):
        st = _store(cfg, n_layers=2)
        q = torch.randn(1, 4, 1, D, generator=torch.Generator().manual_seed(7))
        outs.append(decode_attend(st, 1, q, 0.25, None))
        st.close()
    assert torch.equal(outs[0], outs[1])


UNITS = [("bound", "token"), ("token", "token"), ("token", "chunk"), ("quest", "token"), ("landmark", "token"),
         ("snapkv", "token")]  # fmt: skip


@pytest.mark.parametrize("policy,unit", UNITS)
def test_the_step_is_exact_attention_over_its_selection(policy, unit):
    """What decode computes: per KV head, softmax attention over sinks + that head's selected chunks
    (or tokens) + window, and nothing else (the store's gathers and masks against a plain reference);
    adaptive budgets per row (token selections) pad with -1 past a row's budget."""
    sparse = SparseConfig(budget=0.25, policy=_policy(policy, unit), whole_below=0, rest=None)
    st = TieredKVStore(4, HKV, D, torch.float32, "cpu", config=OffloadConfig(kv_chunk=16, sinks=4, window=16,
                                                                               sparse=sparse))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    n = 600
    for layer in range(4):
        k, v = torch.randn(1, HKV, n, D, generator=g), torch.randn(1, HKV, n, D, generator=g)
        st.append(layer, k, v)
        st.prefill_observer(layer, torch.randn(1, 2 * HKV, 8, D, generator=g), k, D**-0.5, [0.99, 0.5, 0.98, 0.6][layer])
    lay = st.layout
    padded = 0
    for layer in range(4):
        k, v = st.read_layer(layer)  # [1, Hkv, n, D]
        q = torch.randn(1, 4, 16, generator=g)
        m = st.n_chunks(layer)
        ids = st.selector.select(layer, q, m, n)  # what the step will pick (a pure function of q here)
        padded += int((ids < 0).any())
        out = decode_attend(st, layer, q[:, :, None], 16**-0.5, None)  # [1, 1, H, D]
        keep = torch.zeros(2, n, dtype=torch.bool)
        keep[:, : lay.sinks] = True
        keep[:, lay.chunk_start(m) :] = True  # the window: tokens after the last body chunk
        for h in range(2):
            for j in ids[h].tolist():
                if j < 0:
                    continue
                if st.selector.tokens:  # body token j sits at sinks + j
                    keep[h, lay.sinks + j] = True
                else:
                    keep[h, lay.chunk_start(j) : lay.chunk_start(j + 1)] = True
        for head in range(4):
            kv = head // 2
            s = (k[0, kv] @ q[0, head]) * 16**-0.5
            p = torch.softmax(s.masked_fill(~keep[kv], float("-inf")), dim=-1)
            torch.testing.assert_close(out[0, 0, head], p @ v[0, kv], atol=1e-5, rtol=1e-5)
    assert padded > 0 if st.selector.tokens else padded == 0  # the masked path ran
    st.close()


@pytest.mark.parametrize("split", ["adaptive", "uniform"])
def test_the_token_kernel_reads_what_the_step_selected(split):
    """CUDA's token path (`token_kernel_args` -> the Triton token-gather kernel, run here by the
    interpreter) over the store's own buffers gives exact attention over the selection the step
    chose — per-row budgets of an adaptive split (padded rows) and the log-sum-exp included."""
    from offload.kernels.token_decode import token_decode_attention_triton
    from offload.tiers.decode_attention import token_kernel_args

    st = _store(_cfg(policy="token", split=split))
    g = torch.Generator().manual_seed(3)
    m = st.n_chunks(0)
    padded = False
    for layer in range(L):
        for _ in range(2):
            q = torch.randn(1, 2 * HKV, 1, D, generator=g)
            chosen = st.selector.select(layer, q[:, :, 0], m, N, 0.3)  # [R, k] token ids, -1 = padding
            valid = chosen >= 0 if st.selector.padded[layer] else None
            padded |= valid is not None and not bool(valid.all())
            select = chosen if valid is None else torch.where(valid, chosen, chosen[:, :1].clamp(min=0))
            out, lse = token_decode_attention_triton(*token_kernel_args(st, layer, q, select, valid), 0.3)
            want = st.attend(layer, q, 0.3, select=chosen)  # rounds, the exact reference
            torch.testing.assert_close(out.view(want.shape), want, atol=2e-6, rtol=1e-5)
            assert lse.shape == (1, 2 * HKV) and torch.isfinite(lse).all()
    assert padded == (split == "adaptive")  # the adaptive split gave the rows different budgets
    st.close()
