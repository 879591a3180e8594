"""Shared checks of the policies' key summaries (invariant 5: a bound policy's chunk score is >= the
best q.k of the chunk's keys), on random keys and on SmolLM2's real post-RoPE keys."""

import dataclasses

import torch
from hypothesis import strategies as st

from offload.engine import Engine
from offload.sparse import SparseConfig
from offload.sparse.policies.token import TokenSketches
from offload.sparse.policy import Geometry

TOL = 1e-4  # relative to |q| |k|: fp32 rounding of projections and dots


def geometry(n_kv, d, c, capacity=2, kv_dtype=torch.float32, layers=1):
    return Geometry(layers, 1, n_kv, d, c, torch.device("cpu"), capacity=capacity, kv_dtype=kv_dtype)


def best_dot(q, keys, n_kv):
    """max over each chunk's keys of q.k, max over the group: q [1, H, D], keys [Hkv, m, C, D]."""
    h, d = q.shape[1], q.shape[2]
    qg = q[0].reshape(n_kv, h // n_kv, d).double()
    dots = torch.einsum("kgd,kmcd->kgmc", qg, keys.double())  # [Hkv, g, m, C]
    return dots.amax(dim=(1, 3))  # [Hkv, m]


def scale(q, keys):
    return float(q.norm(dim=-1).max() * keys.norm(dim=-1).max())


def summarized(policy, keys, basis_keys=None, capacity=2):
    """The policy's state over keys [Hkv, m, C, D] fed chunk by chunk (growing past `capacity`)."""
    n_kv, m, c, d = keys.shape
    state = policy.start(geometry(n_kv, d, c, capacity))
    state.before_chunks(0, basis_keys if basis_keys is not None else keys.reshape(n_kv, m * c, d))
    for j in range(m):
        state.add(0, j, keys[:, j])
    return state


def chunk_scores(state, layer, q, m):
    """[B, Hkv, m]: the state's score per chunk (token sketches: their per-chunk bound)."""
    if isinstance(state, TokenSketches):
        return state.bound_and_mass(layer, q, m, None)[0]
    return state.scores(layer, q, m, 1, q.shape[-1] ** -0.5, None)


def check_bound(policy, keys, q, basis_keys=None):
    n_kv = keys.shape[0]
    got = chunk_scores(summarized(policy, keys, basis_keys), 0, q, keys.shape[1])[0]  # [Hkv, m]
    want = best_dot(q, keys, n_kv)
    assert (got.double() >= want - TOL * scale(q, keys)).all(), (got - want).min()
    return got, want


def check_bound_on_real_keys(model, policy):
    """Prefill ~600 tokens through a sparse store; for every layer and KV head, the store's own
    summaries bound every key of every body chunk against real-scale queries (the layer's keys
    themselves and random directions with their norms)."""
    cfg = model.config.replace(sparse=SparseConfig(budget=256, policy=policy))
    m = dataclasses.replace(model, config=cfg)
    text = "The lighthouse keeper counted the ships that passed the rocks at night. " * 50
    ids = model.encode(text)[:600]
    store = m.new_store()
    try:
        Engine(m, store).prefill(ids)
        state = store.selector.state
        lay = store.layout
        n_layers, n_kv, d = model.kv_shape()
        n_heads = model.text_config.num_attention_heads
        g = torch.Generator().manual_seed(0)
        for layer in range(n_layers):
            k, _ = store.read_layer(layer)  # [1, Hkv, n, D]
            mc = store.n_chunks(layer)
            assert mc == lay.body_chunks(len(ids)) > 0
            body = k[0, :, lay.sinks : lay.sinks + mc * lay.chunk].reshape(n_kv, mc, lay.chunk, d)
            picks = torch.randint(0, k.shape[2], (n_heads,), generator=g)
            qs = [k[0, torch.arange(n_heads) // (n_heads // n_kv), picks][None],
                  torch.randn(1, n_heads, d, generator=g) * k.norm(dim=-1).mean()]  # fmt: skip
            for q in qs:
                got = chunk_scores(state, layer, q, mc)[0]
                want = best_dot(q, body, n_kv)
                assert (got.double() >= want - TOL * scale(q, body)).all(), (layer, (got - want).min())
    finally:
        store.close()


def same_summaries(policy, buffers, seed=5):
    """Chunks added together equal chunks added one by one (capacity grows in both); buffers(state)
    -> the tensors to compare over the m chunks held."""
    g = torch.Generator().manual_seed(seed)
    n_kv, m, c, d = 2, 7, 8, 32
    keys = torch.randn(n_kv, m * c, d, generator=g) * torch.linspace(0.2, 3, d)
    geo = geometry(n_kv, d, c, capacity=2)
    many, one = policy.start(geo), policy.start(geo)
    for st in (many, one):
        st.before_chunks(0, keys[:, : 3 * c])  # a basis from these
    many.add(0, 0, keys[:, : 3 * c])
    many.add(0, 3, keys[:, 3 * c :])
    one.add(0, 0, keys[:, : 3 * c])
    for j in range(3, m):
        one.add(0, j, keys[:, j * c : (j + 1) * c])
    for a, b in zip(buffers(many, m), buffers(one, m)):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5)
    q = torch.randn(1, 2 * n_kv, d, generator=g)
    torch.testing.assert_close(chunk_scores(many, 0, q, m), chunk_scores(one, 0, q, m), rtol=1e-4, atol=1e-4)


RANDOM_KEYS = dict(  # hypothesis strategies of `check_bound_on_random_keys`'s case
    seed=st.integers(0, 2**31 - 1),
    n_kv=st.sampled_from([1, 3]),
    group=st.sampled_from([1, 3]),
    d=st.sampled_from([8, 64]),
    chunk=st.sampled_from([1, 4, 16]),
    m=st.integers(1, 6),
    spread=st.floats(0.01, 100.0),
    offset=st.floats(-10.0, 10.0),
    outlier=st.booleans(),
)


def check_bound_on_random_keys(policy, seed, n_kv, group, d, chunk, m, spread, offset, outlier, any_basis=True):
    """Invariant 5 on random keys [Hkv, m, C, D] (an outlier: one key far off the basis, the needle a
    mean landmark would hide), on the keys' own basis and, for a low-rank policy, on any basis; a key
    as the query: its own chunk's score reaches at least |k|^2."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_kv, m, chunk, d, generator=g) * spread + offset
    if outlier:
        keys[:, 0, 0] = torch.randn(n_kv, d, generator=g) * spread * 50
    q = torch.randn(1, n_kv * group, d, generator=g) * spread
    check_bound(policy, keys, q)
    if any_basis:
        check_bound(policy, keys, q, basis_keys=torch.randn(n_kv, 3 * d, d, generator=g))
    q = keys[:, -1, -1].repeat_interleave(group, 0)[None]
    got, want = check_bound(policy, keys, q)
    assert (got[:, -1] >= want[:, -1] - TOL * scale(q, keys)).all()
