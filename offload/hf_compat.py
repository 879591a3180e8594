"""What changed in transformers' public shapes across the range offload supports (5.17 to 5.25).

transformers 5.25 renamed the cache argument of models and decoder layers from `past_key_values` to
`cache` (the old name warns until it is removed in 5.40), the model outputs' field likewise, and its
attention modules now call `cache.update(k, v, layer_idx, kwargs=kwargs)`. Each fact is read once from
the public signature or output class of the objects at hand, never from a version number or a caught
error, so a release that moves back or forward keeps working.
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["cache_keyword", "output_cache"]

_NAMES = ("cache", "past_key_values")  # newest first


def cache_keyword(module: torch.nn.Module) -> str:
    """The keyword `module.forward` (a decoder layer or a whole HF model) takes its KV cache by."""
    params = inspect.signature(module.forward).parameters  # follows the deprecation wrapper
    for name in _NAMES:
        if name in params:
            return name
    raise TypeError(f"{type(module).__name__}.forward takes no KV cache argument ({' or '.join(_NAMES)})")


def output_cache(out):
    """The KV cache a model's forward returned (`out.cache` from 5.25, `out.past_key_values` before)."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    for name in _NAMES:
        if name in fields:
            return getattr(out, name)
    raise TypeError(f"{type(out).__name__} carries no KV cache field ({' or '.join(_NAMES)})")
