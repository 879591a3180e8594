"""Sparse sessions (offload/session_sparse.py): the selector's state (plan statistics, policy state)
is saved in sparse.safetensors and restored on load, so a reopened chat decodes as the original
continues; a damaged file is a SessionError."""

import dataclasses

import pytest

import offload
from offload.errors import SessionError
from offload.sparse import SparseConfig
from offload.sparse.policies.token import TwoLevel
from offload.session_sparse import SPARSE_FILE

DOC = ("The tiers keep every chunk of the cache somewhere: a few on the device, most in host memory, "
       "the rest in files on disk. The lighthouse keeper wrote the code word amber-falcon-42 in the log. ") * 12
QUESTION = "What code word did the keeper write?"


def _sparse(model, policy):
    return dataclasses.replace(model, config=model.config.replace(sparse=SparseConfig(budget=128, policy=policy)))


@pytest.mark.parametrize("policy", ["token", "snapkv", TwoLevel(block=16, candidates=2)])
def test_a_reopened_session_continues_as_the_original(model, tmp_path, policy):
    sparse = _sparse(model, policy)
    chat = offload.Chat(sparse)
    chat.send(DOC + "\nSummarize it in one sentence.", max_new_tokens=8)
    path = tmp_path / "s.offload"
    chat.save_session(path)
    assert (path / SPARSE_FILE).is_file()
    plan = chat.store.selector.plan
    again = offload.Chat(sparse)
    again.load_session(path)
    got = again.store.selector.plan
    assert got.ceilings == plan.ceilings and got.attn_cos == plan.attn_cos  # restored, not fresh
    assert any(c is not None for c in got.ceilings)
    want = chat.send(QUESTION, max_new_tokens=64)
    assert again.send(QUESTION, max_new_tokens=64) == want
    two_level = again.store.selector.counters["selections_two_level"]
    assert (two_level > 0) == isinstance(policy, TwoLevel)  # the blocks picked candidates
    chat.close(), again.close()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_sparse_file_is_a_session_error(model, tmp_path, damage):
    sparse = _sparse(model, "token")
    chat = offload.Chat(sparse)
    chat.send(DOC[:600], max_new_tokens=2)
    path = tmp_path / "s.offload"
    chat.save_session(path)
    chat.close()
    f = path / SPARSE_FILE
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    f.chmod(0o600)
    f.write_bytes(bytes(data))
    again = offload.Chat(sparse)
    with pytest.raises(SessionError):
        again.load_session(path)
    again.close()


def test_a_session_saved_before_new_policy_parameters_still_restores(model, tmp_path):
    """Sessions saved before `token` had `candidates` / `block` hold a policy config without them:
    they restore (the fields at their defaults), and a changed parameter still does not."""
    import json
    import zlib

    from offload.session_header import HEADER

    sparse = _sparse(model, "token")
    chat = offload.Chat(sparse)
    chat.send(DOC + "\nSummarize it in one sentence.", max_new_tokens=4)
    path = tmp_path / "s.offload"
    chat.save_session(path)
    outer = json.loads((path / HEADER).read_text())
    policy = outer["body"]["sparse"]["config"]["policy"]
    assert policy["candidates"] == 0 and policy["block"] == 64
    del policy["candidates"], policy["block"]
    outer["crc32"] = zlib.crc32(json.dumps(outer["body"], sort_keys=True).encode())
    (path / HEADER).write_text(json.dumps(outer))
    again = offload.Chat(sparse)
    again.load_session(path)
    assert again.store.selector.plan.ceilings == chat.store.selector.plan.ceilings
    other = offload.Chat(_sparse(model, "token2"))
    other.load_session(path)
    assert other.store.selector.plan.ceilings != chat.store.selector.plan.ceilings  # fresh: not restored
    chat.close(), again.close(), other.close()
