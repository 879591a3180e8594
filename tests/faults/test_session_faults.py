"""Sessions a hostile or unlucky user hands back: unreadable, edited with a valid checksum, a FIFO
for a header, temp directories of a save killed with -9. Each is a SessionError (CLI exit 5) and
leaves the current conversation and any saved session as they were."""

import errno
import json
import os
import subprocess
import sys
import threading
import zlib

import pytest

import offload
from offload.cli.session_file import open_session
from offload.errors import SessionError
from offload.session import save_session

from fault_helpers import as_nobody


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """A real two-message chat session of the embedded model, and the chat's tokens."""
    path = tmp_path_factory.mktemp("sessions") / "talk.session"
    with offload.Chat(model) as chat:
        chat.send("Name a colour.", max_new_tokens=3)
        chat.save_session(path)
        return path, list(chat.tokens)


def _edit(src, dst, change):
    """A copy of session `src` at `dst` whose header body `change` edits, with a fresh valid CRC."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    header = json.loads((dst / "header.json").read_text())
    change(header["body"])
    header["crc32"] = zlib.crc32(json.dumps(header["body"], sort_keys=True).encode())
    (dst / "header.json").write_text(json.dumps(header))
    return dst


def _drop_last_layer(b):
    b["n_layers"] -= 1
    b["layers"].pop()
    b["layer_lens"].pop()


EDITS = {
    "chunk 0": lambda b: b.update(chunk=0),
    "one layer dropped consistently": _drop_last_layer,
    "messages not dicts": lambda b: b["meta"].update(messages=["hello", 3]),
    "messages not a list": lambda b: b["meta"].update(messages={"role": "user"}),
    "a message without content": lambda b: b["meta"].update(messages=[{"role": "user"}]),
    "meta not an object": lambda b: b.update(meta=[1]),
    "token id past the vocabulary": lambda b: b["tokens"].__setitem__(0, 10**9),
    "negative token id": lambda b: b["tokens"].__setitem__(0, -1),
    "fewer token ids": lambda b: b["tokens"].pop(),
    "n_tokens off": lambda b: b.update(n_tokens=b["n_tokens"] + 1),
    "float chunk": lambda b: b.update(chunk=64.5),
    "bool head_dim": lambda b: b.update(head_dim=True),
    "other head count": lambda b: b.update(n_kv_heads=4),
    "batch 2": lambda b: b.update(batch=2),
    "layer file elsewhere": lambda b: b["layers"][0].update(file="../talk.session/layer_001.kv"),
    "record past the file": lambda b: b["layers"][1]["records"][0].__setitem__(0, 10**12),
    "record not a list": lambda b: b["layers"][1]["records"].__setitem__(0, "x"),
    "compressed not a bool": lambda b: b["layers"][1]["records"][0].__setitem__(3, 2),
    "size absurd": lambda b: b["layers"][2].update(size=10**15),
    "layers missing": lambda b: b.pop("layers"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_header_edited_with_a_valid_checksum_is_refused_at_load(model, saved, tmp_path, case):
    path = _edit(saved[0], tmp_path / "edited.session", EDITS[case])
    with offload.Chat(model) as chat:
        chat.send("Hi", max_new_tokens=1)
        before = (list(chat.tokens), list(chat.messages))
        with pytest.raises(SessionError, match="edited.session"):
            chat.load_session(path)
        assert (chat.tokens, chat.messages) == before
        assert chat.store.layer_len(0) == len(chat.tokens)


def test_unedited_copy_loads_and_answers(model, saved, tmp_path):
    path = _edit(saved[0], tmp_path / "copy.session", lambda b: None)
    with offload.Chat(model) as chat:
        chat.load_session(path)
        assert chat.tokens == saved[1]
        assert chat.send("And another?", max_new_tokens=2)


def test_unreadable_session_directory_is_a_session_error(model, saved, tmp_path):
    path = _edit(saved[0], tmp_path / "locked.session", lambda b: None)
    os.chmod(path, 0)
    try:
        with offload.Chat(model) as chat, as_nobody():
            with pytest.raises(SessionError, match="locked.session"):
                chat.load_session(path)
            with pytest.raises(SessionError, match="locked.session"):  # the CLI's --session path
                open_session(chat, str(path), verbose=False)
    finally:
        os.chmod(path, 0o700)


def test_a_fifo_header_is_never_opened(model, saved, tmp_path):
    """A FIFO named header.json: save refuses the path and load refuses the session, neither opens
    it (an open for reading would block until a writer came)."""
    target = tmp_path / "trap.session"
    target.mkdir()
    fifo = target / "header.json"
    os.mkfifo(fifo)
    opened, done = [], threading.Event()

    def unblock():  # if anyone blocks opening the FIFO for reading, let them go and say so
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                assert e.errno == errno.ENXIO  # no reader: the normal case
                done.wait(0.01)
                continue
            opened.append(True)
            os.close(fd)

    watcher = threading.Thread(target=unblock, daemon=True)
    watcher.start()
    try:
        with offload.Chat(model) as chat:
            chat.send("Hi", max_new_tokens=1)
            with pytest.raises(SessionError, match="not an offload session"):
                chat.save_session(target)
            with pytest.raises(SessionError, match="trap.session"):
                chat.load_session(target)
    finally:
        done.set()
        watcher.join()
    assert not opened and sorted(os.listdir(target)) == ["header.json"]


_BLOCKED_SAVE = """
import sys, time, torch
from offload.kvstore import DenseKVStore
from offload.session import save_session

class Stuck(DenseKVStore):
    def read_layer(self, layer):
        if layer == 2:  # two layers are in the temp dir now: wait here to be killed
            print("half-written", flush=True)
            time.sleep(600)
        return super().read_layer(layer)

s = Stuck(4, 1, 8, torch.float32, "cpu")
for layer in range(4):
    s.append(layer, torch.ones(1, 1, 5, 8), torch.ones(1, 1, 5, 8))
save_session(sys.argv[1], s, [1] * 5, "fp")
"""


def _store(n, value):
    from offload.kvstore import DenseKVStore
    import torch

    s = DenseKVStore(4, 1, 8, torch.float32, "cpu")
    for layer in range(4):
        s.append(layer, torch.full((1, 1, n, 8), value), torch.full((1, 1, n, 8), value))
    return s


@pytest.mark.parametrize("existing", [False, True])
def test_a_save_killed_with_9_leaves_a_temp_dir_that_the_next_run_reaps(tmp_path, existing):
    from offload.session import load_session

    path = tmp_path / "s.session"
    if existing:
        save_session(path, _store(3, 2.0), [7] * 3, "fp")
    child = subprocess.Popen([sys.executable, "-c", _BLOCKED_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "half-written"
        child.kill()
        child.wait()
    finally:
        child.stdout.close()
    assert len(list(tmp_path.glob("s.session.tmp-*"))) == 1  # the killed save's half directory
    if existing:  # the old session is intact; loading it reaps the dead save's directory
        store, tokens = load_session(path, "fp")
        assert tokens == [7] * 3 and float(store.read_layer(3)[0].mean()) == 2.0
        store.close()
    else:
        save_session(path, _store(4, 1.0), [1] * 4, "fp")
    assert sorted(os.listdir(tmp_path)) == ["s.session"]


def test_a_live_save_s_temp_dir_is_not_reaped(tmp_path):
    path = tmp_path / "s.session"
    child = subprocess.Popen([sys.executable, "-c", _BLOCKED_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "half-written"
        save_session(tmp_path / "other.session", _store(2, 1.0), [1, 1], "fp")
        save_session(path, _store(2, 1.0), [1, 1], "fp")  # same target, while the other save runs
        assert len(list(tmp_path.glob("s.session.tmp-*"))) == 1
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
