"""One sequence at a time: a full queue answers 429 with Retry-After, a client that goes away cancels
its generation (streaming or not), and the KV it leaves behind is still exact."""

import json
import socket
import time

import httpx
import pytest

import offload

COUNT = "Count: 1, 2, 3, 4, 5, 6, 7,"  # greedy SmolLM2 keeps counting: a long generation
WAIT_S = 300  # a wait that never ends fails the test (not a speed check)


@pytest.fixture(scope="module")
def qserver(start_server, tmp_path_factory):
    s = start_server(["--queue-size", "1", "--log-prompts"], tmp_path_factory.mktemp("queue"))
    yield s
    s.stop()


def _health(s):
    return httpx.get(s.url + "/health", timeout=30).json()


def _until(s, check):
    deadline = time.monotonic() + WAIT_S
    while not check(h := _health(s)):
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    return h


def test_queue_full_429_and_stream_disconnect_cancels(qserver, model):
    url = qserver.url
    long = {"prompt": COUNT, "max_tokens": 2000, "temperature": 0, "stream": True}
    other = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6, "temperature": 0,
             "stream": True}  # fmt: skip
    with httpx.Client(timeout=WAIT_S) as a, httpx.Client(timeout=WAIT_S) as b:
        with a.stream("POST", url + "/v1/completions", json=long) as ra:
            lines = ra.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # A is generating
            with b.stream("POST", url + "/v1/chat/completions", json=other) as rb:  # B waits behind A
                assert rb.status_code == 200 and _health(qserver)["queue"] == 1
                full = httpx.post(url + "/v1/chat/completions", json={**other, "stream": False}, timeout=60)
                assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
                assert full.json()["error"]["code"] == "queue_full"
                ra.close()  # A's client goes away: A stops at its next token and B runs
                events = [line for line in rb.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and "error" not in json.loads(events[-2][6:])  # B ran to its end
    h = _until(qserver, lambda h: h["running"] == 0 and h["queue"] == 0)
    assert h["cancelled"] == 1 and h["completed"] >= 1
    again = httpx.post(url + "/v1/completions", json={"prompt": COUNT, "max_tokens": 8, "temperature": 0},
                       timeout=WAIT_S).json()  # fmt: skip
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == again["usage"]["prompt_tokens"] - 1
    assert again["choices"][0]["text"] == offload.generate(model, COUNT, max_new_tokens=8)  # the kept KV is exact


def test_whole_answer_disconnect_cancels(qserver):
    before = _health(qserver)["cancelled"]
    host, port = qserver.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"prompt": "Count: 10, 20, 30,", "max_tokens": 2000, "temperature": 0}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        _until(qserver, lambda h: h["running"] == 1)
    h = _until(qserver, lambda h: h["running"] == 0)
    assert h["cancelled"] == before + 1


def test_log_prompts_logs_text_when_asked(qserver):
    httpx.post(qserver.url + "/v1/completions", json={"prompt": "quokka-marker says", "max_tokens": 2}, timeout=WAIT_S)
    assert "quokka-marker says" in qserver.log()


def test_a_waiting_request_whose_client_left_never_runs(qserver):
    before = _health(qserver)
    long = {"prompt": COUNT, "max_tokens": 2000, "temperature": 0, "stream": True}
    waiting = {"prompt": "A list of birds:", "max_tokens": 50, "temperature": 0, "stream": True}
    with httpx.Client(timeout=WAIT_S) as a, httpx.Client(timeout=WAIT_S) as b:
        with a.stream("POST", qserver.url + "/v1/completions", json=long) as ra:
            lines = ra.iter_lines()  # held: a dropped iterator closes A's connection (httpcore closes on
            assert next(line for line in lines if line.startswith("data: "))  # GeneratorExit): A must stay
            with b.stream("POST", qserver.url + "/v1/completions", json=waiting) as rb:
                h = _health(qserver)
                assert rb.status_code == 200 and h["queue"] == 1 and h["running"] == 1, (h, qserver.log()[-2000:])
            # B's client is gone while it waits; then A's
    h = _until(qserver, lambda h: h["running"] == 0 and h["queue"] == 0 and h["cancelled"] >= before["cancelled"] + 2)
    assert h["completed"] == before["completed"], (before, h, qserver.log()[-2000:])  # B was skipped, not run


def test_sigterm_ends_open_streams_and_exits_0(qserver):
    """Last in this module: it stops the module's server."""
    import signal

    body = {"prompt": COUNT, "max_tokens": 2000, "temperature": 0, "stream": True}
    with httpx.stream("POST", qserver.url + "/v1/completions", json=body, timeout=WAIT_S) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        assert next(lines)  # generating
        qserver.proc.send_signal(signal.SIGTERM)
        rest = list(lines)  # the stream ends at the next token instead of running to 2000
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["error"]["code"] == "cancelled"
    assert qserver.stop() == 0 and "Traceback" not in qserver.log()
