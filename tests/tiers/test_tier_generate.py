"""Generation through the tiered store equals the dense store: greedy tokens on the real embedded
model, with a GPU budget of 2 chunks per layer (attention in rounds) and half the chunks on disk."""

import dataclasses

import offload

PROMPT = ("The tiers keep every chunk of the cache somewhere: a few on the device, most in host memory, "
          "the rest in files on disk. ") * 14 + "Summarize the previous text in one sentence:"  # fmt: skip


def _run(model):
    responses = list(offload.stream_generate(model, PROMPT, max_new_tokens=12))
    return [r.token for r in responses if r.token is not None], responses[-1].kv


def test_greedy_tokens_match_dense_with_spill(model, tmp_path):
    n_layers, n_kv, head_dim = model.kv_shape()
    chunk_bytes = 2 * n_kv * 64 * head_dim * 4  # fp32, C = 64
    n_prompt = len(model.encode(PROMPT))
    body = (n_prompt - 4 - 64) // 64  # chunks per layer after prefill
    assert body >= 4
    cfg = model.config.replace(kv_store="tiered", kv_chunk=64, sinks=4, window=64,
                               hot_set_bytes=2 * n_layers * chunk_bytes,
                               host_mem=body * n_layers // 2 * chunk_bytes, disk_dir=str(tmp_path))  # fmt: skip
    tiered = dataclasses.replace(model, config=cfg)
    store = tiered.new_store()
    assert type(store).__name__ == "TieredKVStore"
    store.close()
    (got, kv), (want, _) = _run(tiered), _run(model)
    assert got == want
    assert kv["misses_disk"] > 0 and kv["misses_host"] > 0 and kv["disk_chunks"] > 0
    assert not list(tmp_path.rglob("*.kv"))  # spill files gone with the store


def test_token_cache_generates_what_a_resident_hot_set_does(model):
    """Sparse `token` decode with a hot set of 8 chunks' bytes a layer (the context's body outgrows
    it: the hot set holds single rows, tiers/token_cache.py) gives the greedy tokens of a hot set that
    holds the whole context: the same selections read from the cache, no step in rounds."""
    from offload.sparse import SparseConfig
    from offload.store_spec import StoreSpec

    n_layers, n_kv, head_dim = model.kv_shape()
    base = model.config.replace(sparse=SparseConfig(budget=32, policy="token", rest=None), ctx=2048)
    chunk_bytes = 2 * n_kv * StoreSpec.chunk_of(base) * head_dim * 4
    small = dataclasses.replace(model, config=base.replace(hot_set_bytes=8 * n_layers * chunk_bytes))
    whole = dataclasses.replace(model, config=base.replace(hot_set_bytes=1 << 30))
    store = small.new_store()
    assert store.token_cache is not None
    store.close()
    (got, kv), (want, kv_whole) = _run(small), _run(whole)
    assert got == want
    assert kv["token_misses"] > 0 and kv["token_hits"] > 0 and kv["rounds"] == 0
    assert kv_whole["token_cache_bytes"] == 0 and "token_misses" not in kv_whole
