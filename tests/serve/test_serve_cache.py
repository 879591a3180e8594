"""--cache-dir: a processed document is saved as a private session, SIGINT / SIGTERM stop the server
cleanly (spill files removed), and a restarted server answers a new question about it without
prefilling it again."""

import os
import signal
import stat
import time

import httpx
import pytest

import offload

DOC = ("Ship's register. " + "Crates of tea and bolts of cloth were counted at the quay. " * 25
       + "The ship's cat is called Pepper. " + "Rain fell on the warehouses. " * 25)
WAIT_S = 300


def _ask(url, question, max_tokens=8):
    messages = [{"role": "system", "content": DOC}, {"role": "user", "content": question}]
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    return messages, httpx.post(url + "/v1/chat/completions", json=body, timeout=WAIT_S).json()


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_restart_keeps_the_processed_document(start_server, tmp_path, model):
    cache, spill = tmp_path / "cache", tmp_path / "spill"
    args = ["--cache-dir", str(cache)]
    # the first server spills KV to disk (a tiny host pool); the prefix it saves is exact all the same
    first = start_server(args + ["--budget", "1/2", "--host-mem", "8M", "--disk-dir", str(spill)], tmp_path)
    try:
        messages, r = _ask(first.url, "What is the cat called?")
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        stats = httpx.get(first.url + "/stats").json()  # which decode ran, the KV's counters per step
        assert stats["decode"] == "sparse 1/2" and stats["last_request"]["completion_tokens"] >= 1
        kv = stats["last_request"]["kv_per_step"]
        assert kv["tokens"] >= r["usage"]["prompt_tokens"] and kv["hits"] + kv["misses"] > 0
        assert {"misses_host", "misses_disk", "rounds", "stall_s"} <= set(kv)
        deadline = time.monotonic() + WAIT_S  # the save runs after the answer went out
        while httpx.get(first.url + "/health").json()["disk_sessions"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert list(spill.glob("offload-spill-*/store-*/*.kv"))  # it did spill
    finally:
        assert first.stop(signal.SIGINT) == 0  # Ctrl-C: a clean exit
    assert "Traceback" not in first.log()
    assert not list(spill.glob("offload-spill-*"))  # spill files removed
    sessions = list(cache.glob("*/*.session"))
    assert len(sessions) == 1 and _mode(cache) == 0o700 and _mode(sessions[0].parent) == 0o700
    assert _mode(sessions[0]) == 0o700 and all(_mode(f) == 0o600 for f in sessions[0].iterdir())

    second = start_server(args, tmp_path)
    try:
        assert "1 cached prefixes" in second.log()
        follow, r = _ask(second.url, "What was counted at the quay?")
        n_doc = len(model.encode(messages[:1]))
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= n_doc - 4  # from disk, not prefilled
        assert r["choices"][0]["message"]["content"] == offload.generate(model, follow, max_new_tokens=8)
    finally:
        assert second.stop() == 0  # SIGTERM
