"""Prefill's hidden states in host memory: the policy (CUDA and large only) and its bytes, and on the
real embedded SmolLM2 the host path gives bitwise the dense path's logits and KV, in one prefill of
several chunks, in a second prefill after it, and through a sparse (tiered) store."""

import dataclasses

import pytest
import torch

from offload.engine import Engine
from offload.prefill_hidden import HIDDEN_ON_DEVICE_MAX, hidden_on_host, prefill_hidden_bytes
from offload.sparse import SparseConfig


def test_cpu_never_moves_the_hidden_states():
    assert not hidden_on_host("cpu", 1 << 20, 4096, 2)
    assert not hidden_on_host(torch.device("cpu"), 1 << 20, 4096, 2)
    assert prefill_hidden_bytes("cpu", 1 << 20, 4096, 2, 2048) == (8 << 30, 0)


def test_cuda_moves_them_past_the_threshold():
    hidden, itemsize = 4096, 2
    at = HIDDEN_ON_DEVICE_MAX // (hidden * itemsize)  # tokens that fill the threshold exactly
    assert not hidden_on_host("cuda", at, hidden, itemsize)
    assert not hidden_on_host(torch.device("cuda", 0), at, hidden, itemsize)
    assert hidden_on_host("cuda:0", at + 1, hidden, itemsize)
    assert hidden_on_host(torch.device("cuda"), 1 << 20, hidden, itemsize)  # Llama-3.1-8B at 1M: 8 GiB


def test_bytes_on_device_and_on_host():
    small = prefill_hidden_bytes("cuda", 1000, 4096, 2, 2048)
    assert small == (1000 * 4096 * 2, 0)
    t, chunk = 1 << 20, 2048
    assert prefill_hidden_bytes("cuda", t, 4096, 2, chunk) == (2 * chunk * 4096 * 2, t * 4096 * 2)


def _ids(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 40000, (n,), generator=g)


def _run(model, hidden_host, turns, **prefill):
    """Prefill `turns` (token tensors) one after the other; the logits of each and the store."""
    store = model.new_store()
    eng = Engine(model, store)
    outs = [eng.prefill(ids, hidden_host=hidden_host, **prefill) for ids in turns]
    return outs, store, eng


def _same_kv(a, b, n_layers):
    for li in range(n_layers):
        for x, y in zip(a.read_layer(li), b.read_layer(li)):
            assert torch.equal(x, y)


@pytest.mark.parametrize("all_logits", [False, True])
def test_host_path_equals_device_path(model, all_logits):
    ids = _ids(300)
    turns = [ids[:170], ids[170:]]  # the second prefill reads the first's KV back (n_prior > 0)
    want, dense, _ = _run(model, False, turns, chunk=64, all_logits=all_logits)
    got, host, _ = _run(model, True, turns, chunk=64, all_logits=all_logits)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.device == w.device
        assert torch.equal(g, w)
    _same_kv(host, dense, model.kv_shape()[0])
    assert host.layer_len(0) == 300


def test_host_path_through_a_sparse_store(model):
    """The tiered store takes prefill statistics (last queries, attention cosines for squeeze budgets):
    the decode step after prefill, which selects with them, is bitwise the same too."""
    cfg = model.config.replace(sparse=SparseConfig(budget=0.25, policy="bound", split="squeeze"))
    sparse = dataclasses.replace(model, config=cfg)
    ids = _ids(400, seed=1)
    turns = [ids[:250], ids[250:399]]
    (want, dense, eng_d), (got, host, eng_h) = (_run(sparse, hh, turns, chunk=96) for hh in (False, True))
    try:
        assert type(host).__name__ == "TieredKVStore"
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        _same_kv(host, dense, model.kv_shape()[0])
        assert torch.equal(eng_h.decode(int(ids[399])), eng_d.decode(int(ids[399])))
    finally:
        dense.close()
        host.close()
