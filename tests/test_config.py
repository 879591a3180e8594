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
        {"select_every": 0},
        {"select_every": 2.0},
        {"select_every": True},
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


def test_chunk_defaults_to_selection_granularity_with_a_budget():
    from offload.config import DENSE_CHUNK, SPARSE_CHUNK, TOKEN_CHUNK

    assert OffloadConfig().chunk == DENSE_CHUNK == 64
    assert OffloadConfig(budget=256).chunk == TOKEN_CHUNK == 8  # policy "token", the default
    for policy in ("bound", "quest", "landmark", "snapkv", "h2o"):  # per-chunk abstracts or scores
        assert OffloadConfig(budget=256, policy=policy).chunk == SPARSE_CHUNK == 16
    assert OffloadConfig(budget=256, kv_chunk=32).chunk == 32
    assert OffloadConfig(kv_chunk=8).chunk == 8
    with pytest.raises(ConfigError, match="kv_chunk"):
        OffloadConfig(kv_chunk=0)


def test_select_unit_defaults_to_tokens_for_the_token_policy_only():
    assert OffloadConfig(budget=256).selects_tokens  # policy "token", the default
    assert not OffloadConfig(budget=256, select_unit="chunk").selects_tokens
    for policy in ("bound", "quest", "landmark", "snapkv", "h2o"):  # per-chunk abstracts or scores
        assert not OffloadConfig(budget=256, policy=policy).selects_tokens
        assert not OffloadConfig(budget=256, policy=policy, select_unit="chunk").selects_tokens
        with pytest.raises(ConfigError, match="select_unit='token' needs policy 'token'"):
            OffloadConfig(budget=256, policy=policy, select_unit="token")
    for bad in ("tokens", "", 1, True):
        with pytest.raises(ConfigError, match="select_unit"):
            OffloadConfig(budget=256, select_unit=bad)
