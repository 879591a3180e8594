"""The policy registry (offload/sparse/policies/__init__.py): every `SelectionPolicy` subclass
defined in a module of the package, by name, ours first then the baselines then the rest; unknown
names and bad parameters are ConfigErrors."""

import ast
import sys
from pathlib import Path

import pytest

import offload.sparse.policies as policies
from offload.errors import ConfigError
from offload.sparse import SparseConfig, make_policy, policy_classes, policy_names
from offload.sparse.policies.bound import Bound
from offload.sparse.policies.token import Token
from offload.sparse.policy import SelectionPolicy


POLICY_BASES = ("SelectionPolicy", "Token")  # `token2` is `token` with two levels


def _defined_in_the_directory() -> dict[str, str]:
    """name -> module stem of every class deriving from SelectionPolicy in policies/*.py (read as source)."""
    found = {}
    for path in sorted(Path(policies.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) in POLICY_BASES for b in node.bases):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", None) == "name":
                        found[stmt.value.value] = path.stem
    return found


def test_every_policy_file_is_listed_in_order():
    defined = _defined_in_the_directory()
    rank = {n: i for i, n in enumerate(policies.ORDER)}
    want = sorted(defined, key=lambda n: (rank.get(n, len(rank)), n))
    assert policy_names() == tuple(want)
    assert policy_names()[:7] == ("token", "token2", "bound", "quest", "landmark", "snapkv", "h2o")  # ours, then baselines
    classes = policy_classes()
    for name, cls in classes.items():
        assert issubclass(cls, SelectionPolicy) and cls.name == name and cls.summary
        assert cls.__module__ == f"offload.sparse.policies.{defined[name]}"


def test_a_new_file_is_a_new_policy(tmp_path, monkeypatch):
    """Adding a policy is adding a file: the registry finds it (after ORDER's, by name)."""
    (tmp_path / "zeta.py").write_text(
        "from dataclasses import dataclass\nfrom offload.sparse.policy import SelectionPolicy\n"
        "@dataclass(frozen=True)\nclass Zeta(SelectionPolicy):\n    name = 'zeta'\n")
    (tmp_path / "alpha.py").write_text(
        "from dataclasses import dataclass\nfrom offload.sparse.policy import SelectionPolicy\n"
        "@dataclass(frozen=True)\nclass Alpha(SelectionPolicy):\n    name = 'alpha'\n")
    monkeypatch.setattr(policies, "__path__", [*policies.__path__, str(tmp_path)])
    try:
        names = policy_names()
        assert names[:7] == ("token", "token2", "bound", "quest", "landmark", "snapkv", "h2o")
        assert names[-2:] == ("alpha", "zeta")
        assert make_policy("zeta").name == "zeta"
    finally:
        for mod in ("zeta", "alpha"):
            sys.modules.pop(f"offload.sparse.policies.{mod}", None)


def test_make_policy():
    assert make_policy("token", share=0.5) == Token(share=0.5)
    assert make_policy("bound", rank=8) == Bound(rank=8)
    for name in policy_names():
        assert make_policy(name) == policy_classes()[name]()
    with pytest.raises(ConfigError, match="nope"):
        make_policy("nope")
    with pytest.raises(ConfigError, match="token"):
        make_policy("token", bogus=1)
    with pytest.raises(ConfigError, match="rank"):
        make_policy("bound", rank=0)
    with pytest.raises(ConfigError, match="quest"):
        make_policy("quest", rank=4)  # quest has no parameters


def test_sparse_config_takes_names_or_objects():
    assert SparseConfig(budget=8).policy == Token()
    assert SparseConfig(budget=8, policy="quest").policy_name == "quest"
    with pytest.raises(ConfigError, match="nope"):
        SparseConfig(budget=8, policy="nope")
