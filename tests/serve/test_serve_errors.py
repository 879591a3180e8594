"""Every refusal is an OpenAI error object with the right status, names the field, and carries no
traceback; the context check happens before any compute."""

import httpx
import openai
import pytest

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and "Traceback" not in r.text
    return err


@pytest.mark.parametrize("body,param", [
    ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "temperature": 2.5}, "temperature"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": True}, "max_tokens"),
    ({"messages": MSG, "max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"messages": MSG, "top_p": 0}, "top_p"),
    ({"messages": MSG, "seed": "x"}, "seed"),
    ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": MSG, "stream": "yes"}, "stream"),
    ({"messages": MSG, "n": 2}, "n"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
])  # fmt: skip
def test_bad_parameters_are_400_naming_the_field(server, body, param):
    err = _error(httpx.post(server.url + CHAT, json=body, timeout=60), 400)
    assert err["param"] == param and param.split("[")[0] in err["message"]


def test_bad_completion_prompt_and_json(server):
    assert _error(httpx.post(server.url + "/v1/completions", json={"prompt": 5}, timeout=60), 400)["param"] == "prompt"
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=60)
    assert _error(r, 400)["code"] == "invalid_json"
    big_id = {"prompt": [1, 2, 10**9], "max_tokens": 2}
    assert _error(httpx.post(server.url + "/v1/completions", json=big_id, timeout=60), 400)["param"] == "prompt"


def test_unknown_fields_are_ignored(server):
    body = {"messages": MSG, "max_tokens": 2, "frequency_penalty": 0.5, "user": "me", "logit_bias": {}, "x": [1]}
    assert httpx.post(server.url + CHAT, json=body, timeout=300).status_code == 200


def test_context_overflow_is_400_with_both_counts_before_compute(server):
    before = httpx.get(server.url + "/health").json()
    doc = "word " * 9000  # ~9k tokens: more than the 8,192-token context
    r = httpx.post(server.url + CHAT, json={"messages": [{"role": "user", "content": doc}], "max_tokens": 10}, timeout=300)
    err = _error(r, 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert err["n_ctx"] == 8192 and err["n_prompt_tokens"] > 8192 and f"{err['n_prompt_tokens']:,}" in err["message"]
    short = {"messages": MSG, "max_tokens": 8190}  # fits alone, not with the answer asked for
    err = _error(httpx.post(server.url + CHAT, json=short, timeout=60), 400)
    assert err["code"] == "context_length_exceeded" and "8,192" in err["message"]
    after = httpx.get(server.url + "/health").json()
    assert after["completed"] == before["completed"] and after["failed"] == before["failed"] == 0


def test_body_over_the_limit_is_413(server):
    big = {"messages": [{"role": "user", "content": "x" * (2 * 2**20)}]}  # the server runs --max-body 1M
    assert _error(httpx.post(server.url + CHAT, json=big, timeout=60), 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}]}'

    assert _error(httpx.post(server.url + CHAT, content=chunks(), timeout=60), 413)["code"] == "request_too_large"


def test_unknown_route_and_method(server):
    assert _error(httpx.get(server.url + "/v1/nothing"), 404)["code"] == "not_found"
    assert _error(httpx.get(server.url + CHAT), 405)["code"] == "method_not_allowed"


def test_openai_client_raises_typed_errors(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=MSG, max_tokens=100_000)
    assert e.value.code == "context_length_exceeded"


def test_internal_errors_are_500_without_internals(model):
    """A failure inside the server (here: tokenizing raises) answers 500 and names nothing inside."""
    from offload.serve import ServeConfig, Service, create_app

    class Broken(Service):
        def job(self, req, emit, label=""):
            raise RuntimeError("secret detail /internal/path")

    service = Broken(ServeConfig())
    service.start(model)
    try:
        from starlette.testclient import TestClient

        app = create_app(service)  # in-process ASGI; a loopback Host, as a local client sends
        with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
            r = client.post(CHAT, json={"messages": MSG})
        err = _error(r, 500)
        assert err["type"] == "server_error" and "secret" not in r.text and "RuntimeError" not in r.text
    finally:
        service.close()


def test_loading_answers_503_with_retry_after():
    """Before the model is loaded: /health says loading, the API asks to retry, the page is served."""
    from starlette.testclient import TestClient

    from offload.serve import ServeConfig, Service, create_app

    with TestClient(create_app(Service(ServeConfig())), base_url="http://127.0.0.1") as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        r = client.post(CHAT, json={"messages": MSG})
        assert _error(r, 503)["code"] == "model_loading" and int(r.headers["Retry-After"]) >= 1
        assert client.get("/").status_code == 200


def test_absurdly_nested_json_is_400(server):
    r = httpx.post(server.url + CHAT, content=b"[" * 100_000 + b"]" * 100_000, timeout=60)
    assert _error(r, 400)["code"] == "invalid_json"


def test_messages_a_chat_template_refuses_are_400(model):
    """A model whose template raises (as Gemma's does when roles do not alternate): 400 on messages.
    The real tokenizer, with a template that refuses a system message."""
    import copy

    from starlette.testclient import TestClient

    from offload.serve import ServeConfig, Service, create_app

    strict = copy.copy(model)
    strict.tokenizer = copy.deepcopy(model.tokenizer)
    strict.tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
                                      "not supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    service = Service(ServeConfig())
    service.start(strict)
    try:
        with TestClient(create_app(service), base_url="http://127.0.0.1") as client:
            r = client.post(CHAT, json={"messages": [{"role": "system", "content": "x"}] + MSG, "max_tokens": 1})
            err = _error(r, 400)
            assert err["param"] == "messages" and "System role not supported" in err["message"]
            assert client.post(CHAT, json={"messages": MSG, "max_tokens": 1}).status_code == 200
    finally:
        service.close()
