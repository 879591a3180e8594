"""Invariant 5: a chunk's abstract score is an upper bound of max over its keys of q.k — on random
keys (hypothesis) and on SmolLM2's real post-RoPE keys captured through the store after a prefill."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.engine import Engine
from offload.tiers.abstracts import ChunkAbstracts

TOL = 1e-4  # relative to |q| |k|: fp32 rounding of projections and dots


def _best_dot(q, keys, n_kv):
    """max over each chunk's keys of q.k, max over the group: q [1, H, D], keys [Hkv, m, C, D]."""
    h, d = q.shape[1], q.shape[2]
    qg = q[0].reshape(n_kv, h // n_kv, d).double()
    dots = torch.einsum("kgd,kmcd->kgmc", qg, keys.double())  # [Hkv, g, m, C]
    return dots.amax(dim=(1, 3))  # [Hkv, m]


def _scale(q, keys):
    return float(q.norm(dim=-1).max() * keys.norm(dim=-1).max())


@pytest.mark.parametrize("kind", ["lowrank", "token", "quest", "mean"])
def test_chunks_added_together_equal_chunks_added_one_by_one(kind):
    g = torch.Generator().manual_seed(5)
    n_kv, m, c, d = 2, 7, 8, 32
    keys = torch.randn(n_kv, m * c, d, generator=g) * torch.linspace(0.2, 3, d)
    many = ChunkAbstracts(1, 1, n_kv, d, kind, 8, "cpu", capacity=2, chunk=c)
    many.add(0, 0, keys[:, : 3 * c])  # the basis from these; both grow past capacity 2
    many.add(0, 3, keys[:, 3 * c :])
    one_b = ChunkAbstracts(1, 1, n_kv, d, kind, 8, "cpu", capacity=2, chunk=c)
    one_b.add(0, 0, keys[:, : 3 * c])
    for j in range(3, m):
        one_b.add(0, j, keys[:, j * c : (j + 1) * c])
    assert many.n[0] == one_b.n[0] == m
    for t in ("lo", "hi", "res"):
        a, b = getattr(many, t), getattr(one_b, t)
        if a is not None:
            torch.testing.assert_close(a[:, :, :, :m], b[:, :, :, :m], rtol=1e-5, atol=1e-5)
    q = torch.randn(1, 2 * n_kv, d, generator=g)
    torch.testing.assert_close(many.scores(0, q), one_b.scores(0, q), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="whole chunks"):
        many.add(0, m, keys[:, : c + 1])
    with pytest.raises(ValueError, match="expected chunk"):
        many.add(0, m + 1, keys[:, :c])


def _check(kind, keys, q, rank, basis_keys=None):
    n_kv, m, c, d = keys.shape
    ab = ChunkAbstracts(1, 1, n_kv, d, kind, rank, "cpu", capacity=2, chunk=c)  # grows while adding
    ab.ensure_basis(0, basis_keys if basis_keys is not None else keys.reshape(n_kv, m * c, d))
    for j in range(m):
        ab.add(0, j, keys[:, j])
    got = ab.scores(0, q)[0]  # [Hkv, m]
    want = _best_dot(q, keys, n_kv)
    assert (got.double() >= want - TOL * _scale(q, keys)).all(), (got - want).min()
    return got, want


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_kv=st.sampled_from([1, 3]),
    group=st.sampled_from([1, 3]),
    d=st.sampled_from([8, 64]),
    chunk=st.sampled_from([1, 4, 16]),
    m=st.integers(1, 6),
    rank=st.integers(1, 12),
    spread=st.floats(0.01, 100.0),
    offset=st.floats(-10.0, 10.0),
    outlier=st.booleans(),
)
def test_bound_on_random_keys(seed, n_kv, group, d, chunk, m, rank, spread, offset, outlier):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_kv, m, chunk, d, generator=g) * spread + offset
    if outlier:  # one key far off the basis: the needle a mean landmark would hide
        keys[:, 0, 0] = torch.randn(n_kv, d, generator=g) * spread * 50
    q = torch.randn(1, n_kv * group, d, generator=g) * spread
    basis_keys = torch.randn(n_kv, 3 * d, d, generator=g)  # any basis must give a bound
    for kind in ("lowrank", "token", "quest"):
        _check(kind, keys, q, rank)
    _check("lowrank", keys, q, rank, basis_keys=basis_keys)
    _check("token", keys, q, rank, basis_keys=basis_keys)
    # a key as the query: its own chunk's score reaches at least |k|^2
    q = keys[:, -1, -1].repeat_interleave(group, 0)[None]
    for kind in ("lowrank", "token"):
        got, want = _check(kind, keys, q, rank)
        assert (got[:, -1] >= want[:, -1] - TOL * _scale(q, keys)).all()


@pytest.mark.parametrize("policy", ["bound", "token"])
def test_bound_on_real_keys(model, policy):
    """Prefill ~600 tokens through a sparse store; for every layer and KV head, the store's own
    abstracts bound every key of every body chunk against real-scale queries (the layer's keys
    themselves and random directions with their norms)."""
    cfg = model.config.replace(budget=256, policy=policy, rank=16)
    m = dataclasses.replace(model, config=cfg)
    text = "The lighthouse keeper counted the ships that passed the rocks at night. " * 50
    ids = model.encode(text)[:600]
    store = m.new_store()
    try:
        Engine(m, store).prefill(ids)
        ab = store.selector.abstracts
        lay = store.layout
        n_layers, n_kv, d = model.kv_shape()
        n_heads = model.text_config.num_attention_heads
        g = torch.Generator().manual_seed(0)
        for layer in range(n_layers):
            k, _ = store.read_layer(layer)  # [1, Hkv, n, D]
            mc = ab.n[layer]
            assert mc == lay.body_chunks(len(ids)) > 0
            body = k[0, :, lay.sinks : lay.sinks + mc * lay.chunk].reshape(n_kv, mc, lay.chunk, d)
            picks = torch.randint(0, k.shape[2], (n_heads,), generator=g)
            qs = [k[0, torch.arange(n_heads) // (n_heads // n_kv), picks][None],
                  torch.randn(1, n_heads, d, generator=g) * k.norm(dim=-1).mean()]  # fmt: skip
            for q in qs:
                got = ab.scores(layer, q)[0]
                want = _best_dot(q, body, n_kv)
                assert (got.double() >= want - TOL * _scale(q, body)).all(), (layer, (got - want).min())
    finally:
        store.close()


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim, rank, kind", [(64, 16, "lowrank"), (128, 32, "lowrank"), (64, 64, "quest"),
                                                  (64, None, "token"), (128, None, "token"),
                                                  (64, 200, "token")])  # fmt: skip
def test_abstracts_are_at_most_an_eighth_of_the_kv(head_dim, rank, kind, kv_dtype):
    """Issue budget: abstract bytes per token <= 1/8 of K+V bytes per token (bf16, or the fp32 KV of
    CPU runs), with the chunk the kind's policy gets by default; the per-layer basis is counted apart (it does
    not grow with context)."""
    from offload.config import OffloadConfig

    policy = {"lowrank": "bound"}.get(kind, kind)
    c, n_kv, chunks = OffloadConfig(budget=256, policy=policy).chunk, 2, 40
    ab = ChunkAbstracts(1, 1, n_kv, head_dim, kind, rank, "cpu", capacity=chunks, chunk=c, kv_dtype=kv_dtype)
    basis = ab.basis.numel() * 4 if kind in ("lowrank", "token") else 0
    per_token = (ab.nbytes - basis) / (chunks * c * n_kv)
    kv = 2 * head_dim * kv_dtype.itemsize
    assert per_token <= kv / 8
    if kind == "token":  # the default rank, and the cap of a larger one, spend the eighth of bf16 KV
        assert ab.rank == head_dim // 2 - 4
        assert per_token == (kv / 8 if kv_dtype == torch.bfloat16 else ab.rank + 8)  # fp32: scale, res
