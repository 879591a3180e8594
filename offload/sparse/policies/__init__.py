"""The registry of selection policies: every `SelectionPolicy` subclass defined in a module of this
package, by its `name`. The CLI, the config and the eval list policies from here."""

from __future__ import annotations

import importlib
import pkgutil

from ...errors import ConfigError
from ..policy import SelectionPolicy

__all__ = ["policy_classes", "policy_names", "make_policy"]

ORDER = ("token", "token2", "bound", "quest", "landmark", "snapkv", "h2o")  # ours first, then baselines


def policy_classes() -> dict[str, type[SelectionPolicy]]:
    """name -> class of every policy in this package (ours first, then the baselines, then the rest)."""
    found: dict[str, type[SelectionPolicy]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, SelectionPolicy) and value.name:
                found[value.name] = value
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def policy_names() -> tuple[str, ...]:
    return tuple(policy_classes())


def make_policy(name: str, **params) -> SelectionPolicy:
    """The policy `name` with `params` (its dataclass fields; the rest keep its defaults)."""
    classes = policy_classes()
    if name not in classes:
        raise ConfigError(f"policy must be one of {tuple(classes)}, got {name!r}")
    try:
        return classes[name](**params)
    except TypeError as e:
        raise ConfigError(f"policy {name!r}: {e}") from None
