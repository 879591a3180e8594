"""offload-serve under a hostile crowd (issue 27): 32 concurrent clients against a bounded queue,
mixed with malformed and oversize bodies, wrong keys and clients that vanish mid-stream; then a
request while the server shuts down. Every accepted request is answered exactly once, every refusal
is a typed JSON error, the log holds no traceback, the worker never dies, and the KV left behind
still gives stock answers."""

import collections
import json
import signal
import socket
import threading
import time

import httpx
import pytest

import offload

KEY = "k-27"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 300  # a wait that never ends fails the test (not a speed check)
N = 32


@pytest.fixture(scope="module")
def crowded(start_server, tmp_path_factory):
    s = start_server(["--api-key", KEY, "--queue-size", "4", "--max-body", "64K"], tmp_path_factory.mktemp("faults"))
    yield s
    s.stop()


def _health(s):
    return httpx.get(s.url + "/health", timeout=60).json()


def _client(url: str, i: int, out: dict) -> None:
    """Client i's one request; what came back goes into out[i] (kind, status, payload)."""
    kind = ("chat", "chat", "chat", "stream-vanish", "garbage", "oversize", "wrong-key", "completion")[i % 8]
    body = {"messages": [{"role": "user", "content": f"Client {i}: name a colour."}], "max_tokens": 3,
            "temperature": 0}  # fmt: skip
    try:
        with httpx.Client(timeout=WAIT_S) as c:
            if kind == "stream-vanish":
                with c.stream("POST", url + "/v1/chat/completions", headers=AUTH, json={**body, "stream": True,
                              "max_tokens": 500}) as r:  # fmt: skip
                    if r.status_code == 200:
                        next(line for line in r.iter_lines() if line.startswith("data: "))
                    out[i] = (kind, r.status_code, None)  # leaving the block closes the connection
                return
            if kind == "garbage":
                r = c.post(url + "/v1/chat/completions", headers={**AUTH, "Content-Type": "application/json"},
                           content=b'{"messages": [{"role": "user", "content": "x"')  # fmt: skip
            elif kind == "oversize":
                r = c.post(url + "/v1/chat/completions", headers=AUTH,
                           json={**body, "messages": [{"role": "user", "content": "y" * 200_000}]})  # fmt: skip
            elif kind == "wrong-key":
                r = c.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer nope"}, json=body)
            elif kind == "completion":
                r = c.post(url + "/v1/completions", headers=AUTH, json={"prompt": f"Client {i} says", "max_tokens": 3})
            else:
                r = c.post(url + "/v1/chat/completions", headers=AUTH, json=body)
            out[i] = (kind, r.status_code, r.json())
    except Exception as e:  # a lost request: recorded, asserted below
        out[i] = (kind, None, repr(e))


def test_32_concurrent_clients_each_get_one_typed_answer(crowded, model):
    before = _health(crowded)
    out: dict = {}
    threads = [threading.Thread(target=_client, args=(crowded.url, i, out)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == list(range(N))  # no client without an answer
    lost = {i: o for i, o in out.items() if o[1] is None}
    assert not lost, lost
    by = collections.Counter((kind, status) for kind, status, _ in out.values())
    expect = {"garbage": {400}, "oversize": {413}, "wrong-key": {401}, "chat": {200, 429}, "completion": {200, 429},
              "stream-vanish": {200, 429}}  # fmt: skip
    for (kind, status), n in by.items():
        assert status in expect[kind], (kind, status, n)
    for kind, status, payload in out.values():
        if payload is not None and status != 200:
            assert set(payload["error"]) >= {"message", "code"} and "Traceback" not in json.dumps(payload)
        if status == 200 and payload is not None:
            assert payload["usage"]["completion_tokens"] >= 1  # an accepted request was answered
    ids = [p["id"] for _, s, p in out.values() if s == 200 and p is not None]
    assert len(ids) == len(set(ids))  # none answered twice
    deadline = time.monotonic() + WAIT_S
    while (h := _health(crowded))["running"] or h["queue"]:
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    accepted = sum(n for (kind, status), n in by.items() if status == 200)
    done = (h["completed"] - before["completed"]) + (h["cancelled"] - before["cancelled"])
    assert done == accepted and h["failed"] == before["failed"]  # each accepted job ended exactly once
    assert "Traceback" not in crowded.log() and crowded.proc.poll() is None
    r = httpx.post(crowded.url + "/v1/completions", headers=AUTH, timeout=WAIT_S,
                   json={"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})  # fmt: skip
    assert r.json()["choices"][0]["text"] == offload.generate(model, "The capital of France is", max_new_tokens=6)


def test_a_request_during_shutdown_is_refused_cleanly(crowded):
    """Last in this module: it stops the module's server."""
    body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "temperature": 0, "stream": True}
    host, port = crowded.url.removeprefix("http://").rsplit(":", 1)
    with httpx.stream("POST", crowded.url + "/v1/completions", headers=AUTH, json=body, timeout=WAIT_S) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        assert next(lines)
        crowded.proc.send_signal(signal.SIGTERM)
        try:  # while it stops: refused at connect, or a typed error, never a hang or a traceback
            late = httpx.post(crowded.url + "/v1/completions", headers=AUTH, timeout=WAIT_S,
                              json={"prompt": "Late", "max_tokens": 2})  # fmt: skip
            assert late.status_code in (503, 429) and "error" in late.json(), late.text
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            pass
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    assert crowded.stop() == 0 and "Traceback" not in crowded.log()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=5).close()
