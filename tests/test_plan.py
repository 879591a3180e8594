"""Memory plan from a transformers config, checked on Llama-3.1-8B's numbers."""

import json

import torch

from transformers import LlamaConfig

from offload.config import OffloadConfig
from offload.plan import GIB, plan

LLAMA_8B = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       tie_word_embeddings=False)  # fmt: skip


def test_llama_8b_at_200k_on_a_24gb_gpu(tmp_path):
    p = plan(LLAMA_8B, 200_000, gpu_mem=24 * GIB, host_mem=64 * GIB, disk_dir=tmp_path)
    assert p.kv_token_bytes == 128 * 1024  # 128 KiB/token at bf16
    assert round(p.kv_bytes / GIB, 1) == 24.4
    assert abs(p.n_params - 8.03e9) < 0.01e9 and p.weights_bytes == 2 * p.n_params
    assert p.fits and p.max_ctx == 200_000 and p.gpu_total_bytes <= 24 * GIB
    assert 2048 <= p.budget_tokens <= 200_000 and p.budget_tokens % 64 == 0
    assert p.host_pool_bytes == p.kv_bytes and p.disk_bytes == 0  # 64 GiB host: half holds it all
    d = p.to_dict()
    assert json.loads(json.dumps(d))["kv_bytes"] == p.kv_bytes
    text = str(p)
    assert "24.41 GiB" in text and "128 KiB/token" in text


def test_too_small_gpu_reports_largest_ctx(tmp_path):
    p = plan(LLAMA_8B, 200_000, gpu_mem=16 * GIB, host_mem=16 * GIB, disk_dir=tmp_path)
    assert not p.fits and p.reasons and 0 < p.max_ctx < 200_000
    assert plan(LLAMA_8B, p.max_ctx, gpu_mem=16 * GIB, host_mem=16 * GIB, disk_dir=tmp_path).fits
    assert not plan(LLAMA_8B, p.max_ctx + 1, gpu_mem=16 * GIB, host_mem=16 * GIB, disk_dir=tmp_path).fits
    assert "NO" in str(p)
    assert plan(LLAMA_8B, 1000, gpu_mem=8 * GIB, disk_dir=tmp_path).max_ctx == 0  # weights alone


def test_host_and_disk_split_and_smollm_shape(tmp_path):
    small = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                        tie_word_embeddings=True)  # fmt: skip
    off = OffloadConfig(host_mem=GIB // 4)
    p = plan(small, 8192, gpu_mem=4 * GIB, host_mem=GIB, disk_dir=tmp_path, offload=off)
    assert p.kv_token_bytes == 2 * 30 * 3 * 64 * 2 and abs(p.n_params - 134.5e6) < 1e6
    assert p.host_pool_bytes <= GIB // 4 and p.host_pool_bytes + p.disk_bytes == p.kv_bytes


def test_sliding_window_layers_are_rings_not_tiered_kv(tmp_path):
    """Gemma 3 4B's shape (34 layers, 29 of them sliding over 1024 tokens): only the 5 global layers'
    KV grows with the context; each sliding layer holds a fixed ring on the GPU."""
    from transformers import Gemma3TextConfig

    from offload.hybrid_store import ring_tokens

    kw = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
              num_key_value_heads=4, head_dim=256, vocab_size=262208, sliding_window=1024)  # fmt: skip
    hybrid = Gemma3TextConfig(**kw)
    every = Gemma3TextConfig(**kw, layer_types=["full_attention"] * 34)
    assert hybrid.layer_types.count("sliding_attention") == 29
    a = plan(hybrid, 128_000, gpu_mem=24 * GIB, host_mem=64 * GIB, disk_dir=tmp_path)
    b = plan(every, 128_000, gpu_mem=24 * GIB, host_mem=64 * GIB, disk_dir=tmp_path)
    tok_layer = 2 * 4 * 256 * 2
    assert a.kv_bytes == 128_000 * 5 * tok_layer and b.kv_bytes == 128_000 * 34 * tok_layer
    assert ring_tokens(1024) == 2048 + 512 and a.ring_bytes == 29 * 2560 * tok_layer and b.ring_bytes == 0
    assert a.sliding_layers == 29 and a.n_layers == 34 and a.fits and b.fits
    assert a.budget_tokens == a.body_tokens > b.budget_tokens  # 5 layers' KV fits whole; 34 layers' does not
    assert "29 sliding-window" in str(a) and "sliding-window rings" in str(a)


def test_a_token_selections_hot_set_holds_its_budget_as_rows(tmp_path):
    """Sparse `token` decode of Llama-3.1-8B at 200k on 24 GiB: the plan's hot set, given to the
    store, is a token cache of exactly the plan's budget per KV head and layer (a step at that budget
    fits), its bytes the rows' and their index's; the chunk slots beside it are a few."""
    from offload.sparse import SparseConfig
    from offload.store_spec import STAGING_CHUNKS, StoreSpec

    cfg = OffloadConfig(sparse=SparseConfig(budget=1 / 16, policy="token", rest=None), ctx=200_000)
    p = plan(LLAMA_8B, 200_000, gpu_mem=24 * GIB, host_mem=64 * GIB, disk_dir=tmp_path, offload=cfg, device="cuda")
    assert p.fits and 2048 <= p.budget_tokens < 200_000
    assert p.hot_set_bytes == p.budget_tokens * 32 * 8 * (2 * 128 * 2 + 16)
    spec = StoreSpec.derive(cfg, 32, 8, 128, torch.bfloat16, "cpu", planned_hot_set=p.hot_set_bytes)
    assert spec.token_slots == p.budget_tokens * 8 and spec.gpu_slots == (STAGING_CHUNKS,) * 32
