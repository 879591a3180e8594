"""Loading from local files only; private cache permissions."""

import os
import stat

import pytest

import offload
from offload.loading import resolve_model_dir


@pytest.mark.parametrize("path", ["HuggingFaceTB/SmolLM2-135M-Instruct", "/no/such/model", "missing.gguf"])
def test_missing_or_hub_id_raises_model_not_found(path):
    with pytest.raises(offload.ModelNotFoundError, match="never downloads"):
        offload.load_model(path)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(offload.ModelNotFoundError, match="config.json"):
        resolve_model_dir(tmp_path)


def test_embedded_conversion_is_cached_privately(model):
    d = model.model_dir
    assert (d / "config.json").is_file() and list(d.glob("*.safetensors"))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.parent).st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert resolve_model_dir(None) == d  # second resolution reuses the conversion


def test_local_model_directory_loads(model):
    m = offload.load_model(model.model_dir)
    assert m.kv_shape() == (30, 3, 64)
    assert m.dtype == model.dtype
