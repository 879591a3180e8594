"""Malformed models for -m: each is ModelFileError (exit 6) with one line saying what is wrong,
never a traceback or exit 1. Real damaged files: random bytes, truncated copies of the embedded GGUF,
a config.json that is not JSON, a directory without weights, truncated safetensors."""

import os
import shutil

import pytest
from click.testing import CliRunner

import offload
from offload.cli.chat import main
from offload.loading import embedded_gguf


def _random_gguf(tmp, model):
    (tmp / "random.gguf").write_bytes(os.urandom(100_000))
    return tmp / "random.gguf", "not a GGUF file"


def _truncated(n):
    def make(tmp, model):
        with open(embedded_gguf(), "rb") as src:
            (tmp / f"cut{n}.gguf").write_bytes(src.read(n))
        return tmp / f"cut{n}.gguf", "damaged or truncated GGUF"
    return make


def _config_not_json(tmp, model):
    (tmp / "d").mkdir()
    (tmp / "d" / "config.json").write_text("{this is not json")
    return tmp / "d", "not a usable model config"


def _only_config(tmp, model):
    (tmp / "d").mkdir()
    shutil.copy(model.model_dir / "config.json", tmp / "d")
    return tmp / "d", "no weights"


def _truncated_weights(tmp, model):
    d = tmp / "d"
    shutil.copytree(model.model_dir, d)
    w = d / "model.safetensors"
    os.truncate(w, os.path.getsize(w) // 2)
    return d, "cannot be loaded"


def _no_tokenizer(tmp, model):
    d = tmp / "d"
    shutil.copytree(model.model_dir, d)
    for f in d.glob("tokenizer*"):
        f.unlink()
    (d / "chat_template.jinja").unlink(missing_ok=True)
    return d, "cannot be loaded"


BAD = {"random bytes .gguf": _random_gguf, "GGUF cut at 1000 bytes": _truncated(1000),
       "GGUF cut at 50 MB": _truncated(50_000_000), "config.json not JSON": _config_not_json,
       "only config.json": _only_config, "safetensors cut in half": _truncated_weights,
       "no tokenizer": _no_tokenizer}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_model_is_a_typed_error(model, tmp_path, case):
    path, says = BAD[case](tmp_path, model)
    with pytest.raises(offload.ModelFileError, match=says) as err:
        offload.load_model(path)
    assert err.value.exit_code == 6 and "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["random bytes .gguf", "config.json not JSON", "only config.json"])
def test_cli_exits_6_with_one_line(model, tmp_path, case):
    path, says = BAD[case](tmp_path, model)
    r = CliRunner().invoke(main, ["-m", str(path), "-p", "hi", "-n", "1"])
    assert r.exit_code == 6, r.output
    assert says in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
