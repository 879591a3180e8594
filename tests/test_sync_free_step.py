"""The sparse decode step reads no tensor value on the host (on a GPU each read would be a sync that
stalls the pipeline): decode steps of the real model run with every tensor-to-host door patched to
raise, across a re-split of the budget (a fraction: the uniform budget grows with the context), for
the default policy with and without the rest, single tokens and chunks, a chunk policy and a budget
in tokens; the patched steps give the logits an unpatched store gives. Every chunk is resident here:
a miss is fetched by Python (`tiers/decode_attention.py`; a lookahead's guess a layer ahead,
`tiers/lookahead.py`, with one wait for its ids)."""

import contextlib

import pytest
import torch

import offload
from offload.config import SparseConfig
from offload.engine import Engine

DOORS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__index__", "__float__", "nonzero")
PROMPT = "The harbour notes say: " + "the tide turned twice and the nets dried on the wall. " * 60


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads():
    """Tensor.item/tolist/cpu/numpy/bool/int/index/float/nonzero and torch.equal raise HostRead."""
    saved = {n: getattr(torch.Tensor, n) for n in DOORS}
    equal = torch.equal

    def door(name):
        def shut(*args, **kwargs):
            raise HostRead(f"a decode step read a tensor on the host: {name}")

        return shut

    try:
        for name in DOORS:
            setattr(torch.Tensor, name, door(f"Tensor.{name}"))
        torch.equal = door("torch.equal")
        yield
    finally:
        for name, f in saved.items():
            setattr(torch.Tensor, name, f)
        torch.equal = equal


def test_the_doors_are_shut():
    t = torch.ones(2)
    with no_host_reads():
        for read in (lambda: t.sum().item(), lambda: t.tolist(), lambda: bool(t[0]), lambda: int(t[0]),
                     lambda: float(t[0]), lambda: torch.equal(t, t), lambda: t.nonzero(), lambda: t.numpy()):
            with pytest.raises(HostRead):
                read()
    assert t.sum().item() == 2.0  # open again


@pytest.mark.parametrize("sparse", [
    SparseConfig(budget=1 / 16),
    SparseConfig(budget=1 / 16, rest="none"),
    SparseConfig(budget=1 / 16, policy=offload.sparse.make_policy("token", unit="chunk")),
    SparseConfig(budget=48, policy="quest"),
    SparseConfig(budget=1 / 16, policy="token2"),
], ids=["token", "token-no-rest", "token-chunks", "quest-48", "token2"])
def test_sparse_steps_read_nothing_on_the_host(model, sparse):
    m = model.__class__(hf=model.hf, tokenizer=model.tokenizer, model_dir=model.model_dir,
                        config=model.config.replace(sparse=sparse, kv_store="tiered"))
    ids = m.encode(PROMPT)
    stores = [m.new_store(), m.new_store()]
    try:
        engines = [Engine(m, s) for s in stores]
        first = engines[0].prefill(ids)
        engines[1].prefill(ids)
        tok = int(first.argmax())
        for step in range(20):  # 1/16 of ~700 tokens grows by one every 16: at least one re-split
            with no_host_reads():
                got = engines[0].decode(tok)
            want = engines[1].decode(tok)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            tok = int(got.argmax())
        stats = stores[0].stats()
        assert stats["selections"] > 0  # it did select
        assert (stats["selections_two_level"] > 0) == (sparse.policy.name == "token2")  # among candidates
    finally:
        for s in stores:
            s.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA caching allocator: runs where CUDA is")
def test_sparse_steps_make_no_new_cuda_segments():
    """On a GPU (bench/gpu_check.sh runs this) the caching allocator's segments (cudaMalloc calls)
    stop growing once the first steps have run: a step allocates nothing the allocator does not
    already hold. A small random-weight Llama in bf16: no model file needs to travel."""
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM

    from offload.attention import ATTN_NAME, register_attention
    from offload.model import OffloadModel

    register_attention()
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=2048)  # fmt: skip
    cfg._attn_implementation = ATTN_NAME
    hf = LlamaForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    config = offload.OffloadConfig(device="cuda", ctx=4096, sparse=SparseConfig(budget=1 / 16))
    m = OffloadModel(hf=hf, tokenizer=None, config=config, model_dir=Path("random"))
    store = m.new_store()
    try:
        engine = Engine(m, store)
        tok = int(engine.prefill(torch.randint(0, 2048, (3000,))).argmax())
        for _ in range(4):  # warm-up: the working set and the rest's buffers reach their sizes
            tok = int(engine.decode(tok).argmax())
        before = torch.cuda.memory_stats()["segment.all.allocated"]
        for _ in range(12):
            tok = int(engine.decode(tok).argmax())
        assert torch.cuda.memory_stats()["segment.all.allocated"] == before
    finally:
        store.close()
