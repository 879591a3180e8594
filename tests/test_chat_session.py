"""A chat saved to disk and reopened by a fresh model object continues exactly."""

import os
import stat

import pytest
import torch

import offload


def test_saved_chat_reopens_without_prefill_and_continues_identically(model, tmp_path):
    path = tmp_path / "talk.session"
    with offload.Chat(model) as chat:
        chat.send("Tell me about the moon in two sentences.", max_new_tokens=20)
        chat.save_session(path)
        expected = [r.token for r in chat.stream("And the sun?", max_new_tokens=12) if r.token is not None]
    for f in path.iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700

    fresh = offload.load_model()  # a new model object, same weights
    calls = []
    with offload.Chat(fresh) as again:
        hook = fresh.hf.model.embed_tokens.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[1]))
        try:
            again.load_session(path)
        finally:
            hook.remove()
        assert calls == []  # reopening ran no prefill
        assert again.messages[-1]["role"] == "assistant"
        got = [r.token for r in again.stream("And the sun?", max_new_tokens=12) if r.token is not None]
    assert got == expected


def test_next_token_logits_equal_after_reload(model, tmp_path):
    path = tmp_path / "s"
    with offload.Chat(model) as a, offload.Chat(model) as b:
        a.send("Count to five.", max_new_tokens=6)
        a.save_session(path)
        b.load_session(path)
        assert b.tokens == a.tokens
        la = a.engine.prefill([model.tokenizer.eos_token_id])
        lb = b.engine.prefill([model.tokenizer.eos_token_id])
        assert torch.equal(la, lb)


def test_bad_session_keeps_the_current_chat(model, tmp_path):
    with offload.Chat(model) as chat:
        chat.send("Hello", max_new_tokens=4)
        before = list(chat.tokens)
        with pytest.raises(offload.SessionError):
            chat.load_session(tmp_path / "nothing-here")
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "header.json").write_text("{not json")
        with pytest.raises(offload.SessionError):
            chat.load_session(tmp_path / "junk")
        assert chat.tokens == before and chat.store.layer_len(0) == len(before)
