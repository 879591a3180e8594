"""Who may talk to the server: loopback by default, an API key compared in constant time, no CORS
unless asked, and no request text in the log unless --log-prompts."""

import httpx
import openai
import pytest
from click.testing import CliRunner

from offload.cli.serve import main
from offload.errors import ConfigError
from offload.serve import ServeConfig

KEY = "s3cret-key"
ALLOWED = "http://allowed.test"


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    s = start_server(["--api-key", KEY, "--cors-origin", ALLOWED], tmp_path_factory.mktemp("access"))
    yield s
    s.stop()


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer", f"bearer  {KEY[:-1]}"])
def test_missing_or_wrong_key_is_401(keyed, header):
    headers = {"Authorization": header} if header else {}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/stats")):
        r = httpx.request(method, keyed.url + path, headers=headers, json={"messages": []}, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text


def test_right_key_works_and_health_and_page_need_none(keyed):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    marker = "zebra-marker-17"
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": marker}], max_tokens=2)
    assert r.usage.completion_tokens >= 1
    assert httpx.get(keyed.url + "/health").status_code == 200
    assert httpx.get(keyed.url + "/").status_code == 200
    assert marker not in keyed.log()  # request text is not logged without --log-prompts


def test_cors_only_for_the_origins_asked(keyed, server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(keyed.url + "/v1/chat/completions", headers={"Origin": ALLOWED, **preflight})
    assert ok.headers.get("access-control-allow-origin") == ALLOWED
    other = httpx.options(keyed.url + "/v1/chat/completions", headers={"Origin": "http://evil.test", **preflight})
    assert "access-control-allow-origin" not in other.headers
    plain = httpx.get(server.url + "/v1/models", headers={"Origin": ALLOWED})  # the default server: no CORS
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_non_loopback_host_needs_a_key():
    r = CliRunner().invoke(main, ["--host", "0.0.0.0"])  # refused before the model loads
    assert r.exit_code == 2 and "--api-key" in r.output and "Traceback" not in r.output
    with pytest.raises(ConfigError):
        ServeConfig(host="192.168.1.20")
    with pytest.raises(ConfigError):
        ServeConfig(host="0.0.0.0", api_key="  ")
    assert ServeConfig(host="0.0.0.0", api_key=KEY).api_key == KEY
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert ServeConfig(host=host).host == host


def test_start_errors_exit_with_offload_chat_codes(tmp_path):
    """The shared options fail the same way as offload-chat's, before anything listens."""
    runner = CliRunner()
    r = runner.invoke(main, ["-m", str(tmp_path / "no-such-model"), "--dry-run"])
    assert r.exit_code == 6 and "never downloads" in r.output
    r = runner.invoke(main, ["--ctx", "lots"])
    assert r.exit_code == 2 and "not a token count" in r.output
    r = runner.invoke(main, ["--ctx", "100M", "--host-mem", "1G", "--dry-run"])
    assert r.exit_code == 3 and "largest context that fits" in r.output
    r = runner.invoke(main, ["--dry-run"])
    assert r.exit_code == 0 and "fits" in r.output


@pytest.mark.parametrize("host,status", [("evil.test", 400), ("evil.test:8080", 400), ("127.0.0.1.evil.test", 400),
                                         ("localhost:1234", 200), ("127.0.0.1", 200), ("[::1]:80", 200)])
def test_loopback_server_answers_only_loopback_host_names(server, host, status):
    """DNS rebinding: a page whose own name resolves to 127.0.0.1 must not read the answers."""
    r = httpx.get(server.url + "/v1/models", headers={"Host": host})
    assert r.status_code == status
    if status == 400:
        assert r.json()["error"]["code"] == "invalid_host"
