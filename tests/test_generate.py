"""generate / stream_generate on the real embedded model, against HF generate."""

import socket

import pytest
import torch

import offload
from offload import ContextOverflowError

STORY = [{"role": "user", "content": "Write a long, detailed story about a dragon who learns to bake bread."}]


def _tokens(model, prompt, **kw):
    return [r.token for r in offload.stream_generate(model, prompt, **kw) if r.token is not None]


def test_greedy_64_tokens_equal_hf_generate(model, hf_model):
    ours = _tokens(model, STORY, max_new_tokens=64)
    ids = torch.tensor([model.encode(STORY)])
    with torch.inference_mode():
        ref = hf_model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=sorted(model.eos_ids))
    ref = [t for t in ref[0, ids.shape[1]:].tolist() if t not in model.eos_ids]
    assert len(ours) == 64
    assert ours == ref


def test_generate_returns_text_of_the_streamed_tokens(model):
    text = offload.generate(model, STORY, max_new_tokens=16)
    toks = _tokens(model, STORY, max_new_tokens=16)
    assert text == model.tokenizer.decode(toks, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible(model):
    kw = dict(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50)
    a = _tokens(model, STORY, seed=7, **kw)
    b = _tokens(model, STORY, seed=7, **kw)
    c = _tokens(model, STORY, seed=8, **kw)
    assert a == b
    assert a != c


def test_stop_string_stops_and_is_excluded(model):
    full = offload.generate(model, STORY, max_new_tokens=40)
    words = full.split()
    stop = words[len(words) // 2]
    responses = list(offload.stream_generate(model, STORY, max_new_tokens=40, stop=[stop]))
    text = "".join(r.text for r in responses)
    assert responses[-1].finish_reason == "stop"
    assert stop not in text
    assert full.startswith(text)
    assert len(responses) < 40


def test_finish_reason_length_and_stats(model):
    rs = list(offload.stream_generate(model, STORY, max_new_tokens=5))
    assert [r.finish_reason for r in rs] == [None] * 4 + ["length"]
    last = rs[-1]
    assert last.generation_tokens == 5 and last.generation_tps > 0
    assert last.prompt_tokens == len(model.encode(STORY)) and last.prompt_tps > 0
    assert last.peak_host_bytes > 0


def test_overflow_raises_before_running_the_model(model):
    calls = []
    hook = model.hf.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    try:
        n = len(model.encode("word " * 50))
        small = model.config.replace(ctx=n + 9)
        tiny = offload.OffloadModel(model.hf, model.tokenizer, small, model.model_dir)
        with pytest.raises(ContextOverflowError) as e:
            offload.stream_generate(tiny, "word " * 50, max_new_tokens=10)
        assert e.value.n_prompt_tokens == n and e.value.n_ctx == n + 9
        with pytest.raises(ContextOverflowError):
            offload.Chat(tiny).stream("word " * 5000, max_new_tokens=1)
    finally:
        hook.remove()
    assert calls == []


def test_bad_sampling_arguments(model):
    for kw in ({"temperature": -1}, {"top_p": 0.0}, {"top_k": -2}, {"seed": -1}, {"max_new_tokens": 0}):
        with pytest.raises(offload.ConfigError):
            offload.stream_generate(model, "hi", **{"max_new_tokens": 4, **kw})


def test_no_network_during_load_and_generate(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"offload tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    m = offload.load_model()
    assert offload.generate(m, "The capital of France is", max_new_tokens=4)
