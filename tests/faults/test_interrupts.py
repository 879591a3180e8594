"""Stopping offload at the worst moments: Ctrl-C in prefill (the turn is removed whole), SIGTERM /
SIGHUP / kill -9 while a real offload-chat spills KV (nothing left behind, at once or by the next
run)."""

import os
import random
import signal
import subprocess

import pexpect
import pytest

import offload
from offload.tiers.spill import default_spill_root

from fault_helpers import LONG_DOC, leftovers, offload_chat, wait_for


def test_ctrl_c_in_prefill_removes_the_turn_whole(model):
    class Stop:
        def __call__(self, done, total, n):
            if done == 10:
                raise KeyboardInterrupt

    with offload.Chat(model) as chat, offload.Chat(model) as clean:
        chat.send("How old is the lighthouse? It is 150 years old.", max_new_tokens=4)
        clean.send("How old is the lighthouse? It is 150 years old.", max_new_tokens=4)
        before = (list(chat.tokens), list(chat.messages))
        with pytest.raises(KeyboardInterrupt):
            for _ in chat.stream(LONG_DOC, max_new_tokens=4, progress=Stop()):
                pass
        assert (chat.tokens, chat.messages) == before
        assert chat.store.layer_len(0) == len(chat.tokens)
        q = "How old is it? One number."
        assert chat.send(q, max_new_tokens=8) == clean.send(q, max_new_tokens=8)


def test_ctrl_c_in_prefill_at_the_prompt(model):
    """Through a real terminal: the progress bar is drawing, Ctrl-C, and /stats counts no turn."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="dumb")
    child = pexpect.spawn(offload_chat(), ["-n", "4"], env=env, encoding="utf-8", timeout=180,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        child.expect_exact("> ")
        child.sendline(LONG_DOC[:6000])
        child.expect_exact("prefill ")
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact("> ")
        child.sendline("/stats")
        child.expect(r"context 0 / [\d,]+ tokens, 0 messages")
        child.expect_exact("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def _spilling_chat(disk, doc):
    """offload-chat answering over `doc` with ~1 MiB of KV in memory: it spills into `disk`."""
    return subprocess.Popen(
        [offload_chat(), "-f", str(doc), "-p", "What did the keeper do?", "-n", "64", "-c", "2048",
         "--disk-dir", str(disk), "--host-mem", "1M", "--gpu-mem", "1105M", "--dense"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _spilled(disk):
    return lambda: any(p.name.endswith(".kv") for p in disk.rglob("*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_term_signals_while_spilling_remove_the_spill(model, tmp_path, sig):
    doc, disk = tmp_path / "doc.md", tmp_path / "disk"
    doc.write_text(LONG_DOC)
    child = _spilling_chat(disk, doc)
    try:
        wait_for(_spilled(disk), "spill files", child)
        child.send_signal(sig)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert leftovers(disk) == []


def test_kill_9_while_spilling_is_reaped_by_the_next_run(model, tmp_path):
    doc, disk = tmp_path / "doc.md", tmp_path / "disk"
    doc.write_text(LONG_DOC)
    child = _spilling_chat(disk, doc)
    try:
        wait_for(_spilled(disk), "spill files", child)
        child.kill()
        child.wait()
    finally:
        child.stderr.close()
    assert leftovers(disk) != []  # what a kill -9 leaves
    offload.load_model(config=offload.OffloadConfig(disk_dir=str(disk)))
    assert leftovers(disk) == []


def test_the_default_spill_root_is_reaped_too(tmp_path, monkeypatch):
    from offload.paths import cache_dir

    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(cache_dir()))  # the converted model is still found there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the spill root moves
    dead = default_spill_root() / f"offload-spill-{2**22 + random.randrange(1000)}-1000"
    (dead / "store-x").mkdir(parents=True)
    (dead / "store-x" / "layer_000.kv").write_bytes(b"kv")
    offload.load_model()
    assert not dead.exists()
