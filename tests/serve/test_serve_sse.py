"""The raw server-sent-event stream over httpx, as a client without the openai package reads it."""

import json

import httpx


def _events(response) -> list[str]:
    """The `data:` payloads, checking the framing: every event is one data line and a blank line."""
    body = response.read().decode()
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[len("data: "):] for e in events]


def test_chat_stream_framing_and_done(server):
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "some_future_field": {"x": 1}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    closing = [c for c in chunks if c["choices"]][-1]
    assert closing["choices"][0]["finish_reason"] in ("stop", "length") and "predicted_per_second" in closing["timings"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_completion_stream_without_usage(server):
    body = {"prompt": "Roses are red,", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=300) as r:
        events = _events(r)
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and all("usage" not in c for c in chunks)
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
    whole = httpx.post(server.url + "/v1/completions", json={**body, "stream": False}, timeout=300).json()
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
