"""A chat keeps its KV across turns and answers exactly as recomputing the conversation would."""

import offload

TURNS = ["Hi! Name three fruits.", "Which of them is yellow?", "Write one sentence about it."]


def _scratch_tokens(model, messages, n):
    return [r.token for r in offload.stream_generate(model, messages, max_new_tokens=n) if r.token is not None]


def test_three_turn_chat_equals_recomputing_from_scratch(model):
    with offload.Chat(model) as chat:
        for i, turn in enumerate(TURNS):
            history = chat.messages + [{"role": "user", "content": turn}]
            expected = _scratch_tokens(model, history, 24)
            before = chat.n_tokens
            got = [r.token for r in chat.stream(turn, max_new_tokens=24) if r.token is not None]
            assert got == expected, f"turn {i + 1} differs"
            rs = chat.messages[-1]
            assert rs["role"] == "assistant" and rs["content"] == model.tokenizer.decode(got, skip_special_tokens=True)
            if i:
                # only the new turn was prefilled: the store kept the earlier conversation
                assert before > 0 and chat.store.layer_len(0) == chat.n_tokens


def test_interrupted_answer_keeps_the_conversation_usable(model):
    with offload.Chat(model) as chat:
        stream = chat.stream(TURNS[0], max_new_tokens=30)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()  # what Ctrl-C does in offload-chat
        assert chat.store.layer_len(0) == chat.n_tokens
        assert chat.messages[-1]["role"] == "assistant"
        expected = _scratch_tokens(model, chat.messages + [{"role": "user", "content": TURNS[1]}], 12)
        got = [r.token for r in chat.stream(TURNS[1], max_new_tokens=12) if r.token is not None]
        assert got == expected
        chat.clear()
        assert chat.n_tokens == 0 and chat.messages == []
