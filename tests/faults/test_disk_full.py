"""A full disk (a real 4 MiB tmpfs) while spilling KV and while saving a session: a typed
`DiskFullError` (exit 7, with advice), the spill removed, the conversation and old session intact."""

import os
import shutil
import subprocess

import pexpect
import pytest
import torch
from click.testing import CliRunner

import offload
from offload.cli.chat import main
from offload.errors import DiskFullError
from offload.store_spec import StoreSpec

from fault_helpers import LONG_DOC, leftovers, mount_tmpfs, offload_chat, spilling


def test_spill_onto_a_full_disk_is_a_typed_error_and_leaves_nothing(model, tmpfs):
    m = spilling(model, tmpfs)
    with offload.Chat(m) as chat:
        chat.send("Say hi.", max_new_tokens=2)
        before = (list(chat.tokens), list(chat.messages))
        with pytest.raises(DiskFullError, match="--disk-dir"):
            chat.send(LONG_DOC + "\nWhat did the keeper do?", max_new_tokens=4)
        assert (chat.tokens, chat.messages) == before  # the failed turn is removed whole
        assert chat.store.layer_len(0) == len(chat.tokens)
    assert leftovers(tmpfs) == []
    with pytest.raises(DiskFullError):
        offload.generate(m, LONG_DOC, max_new_tokens=2)
    assert leftovers(tmpfs) == []


def test_an_append_that_fills_the_disk_leaves_the_layer_as_it_was(tmpfs):
    """One append of many chunks, the disk full part way through them: the chunks it wrote are given
    back, the layer keeps its length and its chunks, and it takes appends again once they fit."""
    cfg = offload.OffloadConfig(kv_store="tiered", device="cpu", dtype="bfloat16", compress=False,
                                host_mem=1 << 18, hot_set_bytes=1 << 18, disk_dir=str(tmpfs))  # fmt: skip
    spec = StoreSpec.derive(cfg, 1, 8, 128, torch.bfloat16, "cpu")  # 256 KiB chunks: < 16 fit the 4 MiB disk
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(1, 8, 2048, 128, generator=g).to(torch.bfloat16) for _ in range(2))
    keys = ("tokens", "chunks", "disk_chunks", "disk_bytes", "host_bytes", "gpu_bytes")
    with spec.new_store() as store:
        store.append(0, k[:, :, :512], v[:, :, :512])  # 6 chunks: 1 on the host, 5 on disk
        before = {key: store.stats()[key] for key in keys}
        with pytest.raises(DiskFullError, match="--disk-dir"):
            store.append(0, k[:, :, 512:], v[:, :, 512:])  # 24 more chunks on disk: it fills part way
        assert {key: store.stats()[key] for key in keys} == before and store.n_chunks(0) == 6
        assert [os.path.getsize(f) for f in store.spill_files] == [before["disk_bytes"]]
        store.append(0, k[:, :, 512:600], v[:, :, 512:600])  # 2 more chunks fit
        got_k, got_v = store.read_layer(0)
        assert torch.equal(got_k, k[:, :, :600]) and torch.equal(got_v, v[:, :, :600])
    assert leftovers(tmpfs) == []


def test_cli_exits_7_when_the_session_disk_is_full(model, tmpfs, tmp_path):
    """-p with --session on a disk too small for the session: exit 7 with advice, nothing left."""
    doc = tmp_path / "doc.md"
    doc.write_text(LONG_DOC)
    session = tmpfs / "doc.session"
    r = CliRunner().invoke(main, ["-f", str(doc), "-p", "What did the keeper do?", "-n", "2",
                                  "--session", str(session)])  # fmt: skip
    assert r.exit_code == 7, r.output
    assert "disk is full" in r.output and "Traceback" not in r.output
    assert leftovers(tmpfs) == []


def test_interactive_spill_onto_a_full_disk_reports_and_goes_on(model, tmp_path):
    """The plan saw room on the disk; another program fills it before the spill: the turn fails
    with the advice, the chat goes on, and /exit leaves no spill behind."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "256m")
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="dumb")
        child = pexpect.spawn(offload_chat(), ["--disk-dir", str(disk), "--host-mem", "1M", "--gpu-mem", "1105M", "--dense",
                                               "-c", "2048", "-n", "2"], env=env, encoding="utf-8", timeout=180)  # fmt: skip
        try:
            child.expect_exact("> ")
            free = shutil.disk_usage(disk).free
            with open(disk / "ballast", "wb") as f:  # leave 1 MiB
                f.truncate(0)
                f.write(b"\0" * (free - (1 << 20)))
            child.sendline(LONG_DOC[:8000] + " What did the keeper do?")
            child.expect_exact("is full")
            child.expect_exact("> ")
            (disk / "ballast").unlink()
            child.sendline("/exit")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0, child.before
        assert leftovers(disk) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_save_onto_a_full_disk_keeps_the_old_session(model, tmpfs):
    path = tmpfs / "talk.session"
    with offload.Chat(model) as chat:
        chat.send("Say hi.", max_new_tokens=2)
        chat.save_session(path)
        saved = sorted(os.listdir(path))
        chat.send(LONG_DOC + "\nWhat did the keeper do?", max_new_tokens=2)
        with pytest.raises(DiskFullError, match="disk is full"):
            chat.save_session(path)
    assert sorted(os.listdir(tmpfs)) == ["talk.session"] and sorted(os.listdir(path)) == saved
    with offload.Chat(model) as again:
        again.load_session(path)
        assert [m["role"] for m in again.messages] == ["user", "assistant"]
