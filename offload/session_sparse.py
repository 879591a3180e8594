"""The sparse-decode state of a session: the selector's budget plan statistics and its policy's
state (summary basis, snapkv/h2o scores), so a reopened store selects as the original did.

Saved as `sparse.safetensors` (safetensors: a plain, checked tensor container — no pickle) beside
the layers, listed in the header as

    "sparse": {"file": "sparse.safetensors", "size": bytes, "crc32": crc, "config": {policy,
               its parameters, split, budget, whole_below, chunk}, "stats": {"ceilings": [...],
               "attn_cos": [...]}}

Restored only into a store of the same sparse config (another budget or policy starts from fresh
statistics, as before the state was kept); a damaged file is a `SessionError`.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import safetensors.torch

from .atomic_dir import write_new_file
from .errors import SessionError
from .session_header import read_regular

__all__ = ["save_sparse", "restore_sparse", "SPARSE_FILE"]

SPARSE_FILE = "sparse.safetensors"


def _config_key(store) -> dict:
    sparse = store.spec.sparse
    policy = {"name": sparse.policy.name, **dataclasses.asdict(sparse.policy)}
    return {"policy": policy, "split": sparse.split, "budget": sparse.budget, "whole_below": sparse.whole_below,
            "chunk": store.layout.chunk}  # fmt: skip


def _with_new_fields(saved: dict, store) -> dict:
    """A saved config key with the policy parameters added since it was saved at their defaults
    (`Token.candidates` and `block` came later: a session saved before still restores)."""
    policy = saved.get("policy")
    if not isinstance(policy, dict):
        return saved
    fields = dataclasses.fields(type(store.spec.sparse.policy))
    filled = {**{f.name: f.default for f in fields if f.default is not dataclasses.MISSING}, **policy}
    return {**saved, "policy": filled}


def save_sparse(store, directory: Path) -> dict | None:
    """Write the selector state of `store` into `directory`; the header entry (None when dense)."""
    selector = getattr(store, "selector", None)
    if selector is None:
        return None
    stats, tensors = selector.state_dict()
    data = safetensors.torch.save({k: v.contiguous().cpu() for k, v in tensors.items()})
    write_new_file(directory / SPARSE_FILE, data)
    return {"file": SPARSE_FILE, "size": len(data), "crc32": zlib.crc32(data), "config": _config_key(store),
            "stats": stats}  # fmt: skip


def restore_sparse(store, path: Path, entry: dict | None) -> bool:
    """Load the saved selector state into `store` when it has the saved sparse config. Returns
    whether it did. Raises SessionError for a damaged file or state."""
    selector = getattr(store, "selector", None)
    if entry is None or selector is None or _with_new_fields(entry["config"], store) != _config_key(store):
        return False
    size = entry["size"]
    data = bytes(read_regular(path / SPARSE_FILE, size))
    if len(data) != size or zlib.crc32(data) != entry["crc32"]:
        raise SessionError(f"{path}: {SPARSE_FILE} is damaged (size or checksum mismatch)")
    try:
        tensors = safetensors.torch.load(data)
        selector.load_state_dict(entry["stats"], tensors)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise SessionError(f"{path}: the sparse state does not fit this store ({type(e).__name__}: {e})") from None
    return True
