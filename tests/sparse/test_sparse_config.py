"""`SparseConfig` (offload/sparse/config.py): every bad field is a ConfigError; a policy name means
the registry's policy with its defaults. (Named test_sparse_config.py: tests/test_config.py exists.)"""

import pytest

from offload import ConfigError, OffloadConfig
from offload.sparse import SparseConfig
from offload.sparse.policies.token import Token


@pytest.mark.parametrize("kwargs", [
    {"budget": 0}, {"budget": -3}, {"budget": 1.0}, {"budget": 0.0}, {"budget": 1.5}, {"budget": True},
    {"budget": "1/8"}, {"budget": None}, {"policy": "magic"}, {"policy": 3}, {"split": "random"},
    {"split": "layer"}, {"whole_below": -0.1}, {"whole_below": 1.5}, {"whole_below": "0.5"},
    {"whole_below": True}, {"whole_below": None}, {"select_every": 0}, {"select_every": 2.0},
    {"select_every": True}, {"lookahead": 1}, {"lookahead": "on"},
])  # fmt: skip
def test_bad_fields(kwargs):
    with pytest.raises(ConfigError):
        SparseConfig(**{"budget": 8, **kwargs})


def test_defaults_and_names():
    c = SparseConfig(budget=0.125)
    assert (c.policy, c.split, c.whole_below, c.select_every) == (Token(), "adaptive", 0.5, 1)
    assert c.policy_name == "token" and c.policy.selects_tokens
    assert SparseConfig(budget=8, policy=Token(unit="chunk")).policy.selects_tokens is False
    for split in ("uniform", "squeeze", "adaptive"):
        assert SparseConfig(budget=8, split=split).split == split
    with pytest.raises(Exception):
        c.budget = 3  # frozen


def test_offload_config_takes_a_sparse_config_only():
    assert OffloadConfig().sparse is None
    assert OffloadConfig(sparse=SparseConfig(budget=8)).sparse.budget == 8
    with pytest.raises(ConfigError, match="sparse"):
        OffloadConfig(sparse={"budget": 8})
    for old in ("budget", "policy", "layer_budget", "select_every"):  # the knobs moved into SparseConfig
        with pytest.raises(TypeError):
            OffloadConfig(**{old: 1})
