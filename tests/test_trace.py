"""How far a sparse decode step is from `offload-chat`: the repo files on the call stacks of a decode
step's attention op (one query: SDPA) and of its selection (the policy's top-k), from the CLI's
`main` down, stay at most MAX_FILES together (issue 21: what a newcomer opens tracing the step);
and no module reads another object's private attributes (`test_no_private_reads`)."""

import ast
import os
from pathlib import Path

import torch.nn.functional as F
from click.testing import CliRunner

from offload.cli.chat import main

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 10
SOURCE = ("offload", "tiers", "kernels", "cli")
# transformers documents no public getter for a model's attention implementation in 5.x
ALLOWED = {"_attn_implementation"}


def _repo_files(stack) -> list[str]:
    out = []
    for frame in stack:
        path = Path(os.path.realpath(frame.f_code.co_filename))
        if ROOT in path.parents and ".venv" not in path.parts and path.parts[len(ROOT.parts)] in SOURCE:
            rel = str(path.relative_to(ROOT))
            if rel not in out:
                out.append(rel)
    return out


def test_sparse_decode_step_is_few_files_from_the_cli(model, tmp_path, monkeypatch):
    import sys

    import torch

    seen: dict[str, list[str]] = {}
    sdpa, topk = F.scaled_dot_product_attention, torch.topk

    def stack() -> list[str]:
        frames, f = [], sys._getframe(2)
        while f is not None:
            frames.append(f)
            f = f.f_back
        return _repo_files(reversed(frames))

    def spy_sdpa(q, *args, **kwargs):
        if q.shape[-2] == 1:  # a one-query attention: a decode step's
            seen.setdefault("attention", stack())
        return sdpa(q, *args, **kwargs)

    def spy_topk(*args, **kwargs):
        if "attention" in seen:
            seen.setdefault("selection", stack())
        return topk(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(torch, "topk", spy_topk)
    doc = tmp_path / "doc.md"
    doc.write_text("The keeper logged the weather, the ships and the lamp every evening. " * 60)
    r = CliRunner().invoke(main, ["-f", str(doc), "-p", "What did the keeper log?", "-n", "3", "--budget", "1/16"])
    assert r.exit_code == 0, r.output
    assert set(seen) == {"attention", "selection"}, seen
    assert seen["attention"][0] == "cli/chat.py" and seen["attention"][-1] == "tiers/working_set.py", seen
    assert seen["selection"][-1].startswith("offload/sparse/policies/"), seen
    files = list(dict.fromkeys(seen["attention"] + seen["selection"]))
    assert len(files) <= MAX_FILES, files


def test_no_private_reads():
    """No module reads another object's `_private` attribute: `x._name` only on `self`/`cls`, or
    on a module (`sys._getframe`) — checked over the runtime's source."""
    bad = []
    for folder in SOURCE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if folder == "offload" and path.relative_to(ROOT / "offload").parts[0] in ("kernels", "tiers", "cli"):
                continue  # symlinks to the top-level folders
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                    base = node.value
                    if node.attr in ALLOWED or (isinstance(base, ast.Name) and base.id in ("self", "cls", "sys", "os", "torch", "tl")):
                        continue
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not bad, "\n".join(bad)
