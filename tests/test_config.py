import pytest
import torch

from offload import ConfigError, OffloadConfig


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ctx": 0},
        {"ctx": -5},
        {"ctx": 1.5},
        {"ctx": True},
        {"prefill_chunk": 0},
        {"dtype": "int8"},
        {"device": "tpu"},
        {"kv_store": "magic"},
        {"window": -1},
        {"compress": "yes"},
        {"host_mem": 0},
        {"gpu_mem": 0},
        {"hot_set_bytes": -1},
        {"hot_set_bytes": 1.5},
        {"kv_chunk": 0},
        {"sparse": 8},
    ],
)
def test_bad_fields_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        OffloadConfig(**kwargs)


def test_frozen_and_defaults_resolve_on_cpu():
    c = OffloadConfig()
    with pytest.raises(Exception):
        c.ctx = 5  # frozen
    if not torch.cuda.is_available():
        assert c.torch_device().type == "cpu"
        assert c.torch_dtype() == torch.float32
    assert c.replace(ctx=1024).ctx == 1024
    with pytest.raises(ConfigError):
        c.replace(ctx=-1)


def test_cuda_device_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # only meaningful where CUDA is absent
    with pytest.raises(ConfigError, match="no CUDA"):
        OffloadConfig(device="cuda")


def test_gpu_mem_and_hot_set_bytes_are_separate_knobs():
    c = OffloadConfig(gpu_mem=8 << 30, hot_set_bytes=1 << 20)
    assert (c.gpu_mem, c.hot_set_bytes) == (8 << 30, 1 << 20)
