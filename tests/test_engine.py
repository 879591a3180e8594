"""Layer-major prefill and token decode against HF's own forward on the real embedded model."""

import torch

from offload.engine import Engine


def _ids(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 40000, (1, n), generator=g)


def test_layer_major_prefill_equals_hf_forward(model, hf_model):
    ids = _ids(1500)
    with torch.inference_mode():
        ref = hf_model(ids).logits[0].float()
    eng = Engine(model, model.new_store())
    out = eng.prefill(ids[0], chunk=256, all_logits=True)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-4
    assert eng.n_tokens == 1500


def test_prefill_in_two_turns_and_decode_equal_hf(model, hf_model):
    ids = _ids(700, seed=1)
    with torch.inference_mode():
        ref = hf_model(ids).logits[0].float()
    eng = Engine(model, model.new_store())
    eng.prefill(ids[0, :300], chunk=128)
    second = eng.prefill(ids[0, 300:699], chunk=100, all_logits=True)  # prior KV read back from the store
    assert (second - ref[300:699]).abs().max().item() <= 1e-4
    last = eng.decode(int(ids[0, 699]))  # one decode step through the registered attention
    assert (last - ref[699]).abs().max().item() <= 1e-4
    eng.truncate(300)
    again = eng.prefill(ids[0, 300:310], all_logits=True)
    assert (again - ref[300:310]).abs().max().item() <= 1e-4


def test_prefill_feeds_layers_chunk_by_chunk(model):
    # Activations are bounded by one chunk: layer 0 sees 96 tokens as three chunks of 32.
    eng = Engine(model, model.new_store())
    seen = []
    orig = model.hf.model.layers[0].self_attn.k_proj.register_forward_hook(
        lambda m, i, o: seen.append(o.shape)
    )
    try:
        eng.prefill(_ids(96)[0], chunk=32)
    finally:
        orig.remove()
    assert seen == [torch.Size([1, 32, model.kv_shape()[1] * model.kv_shape()[2]])] * 3
