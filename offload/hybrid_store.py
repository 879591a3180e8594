"""`HybridKVStore`: the KV of a model whose layers mix global and sliding-window attention (Gemma 3:
five 512-token sliding layers per global one).

Sliding layers keep a `WindowRing` each on the compute device; only the global layers reach the
inner store (dense or tiered, with its selection), which is built for those layers alone and sees
them under its own indices 0..G-1. The engine, sessions and the eval keep using model layer indices:
this class maps them. A sparse step never runs on a sliding layer (`decode_attend` passes their
window), so the inner store's selector, budget split and summaries cover global layers only.

A rewind (`truncate`) that a ring cannot serve exactly (further back than its margin) drops the whole
sequence: `Engine.truncate` returns what is kept and callers prefill the rest again.
"""

from __future__ import annotations

import torch

from .window_ring import WindowRing, ring_capacity

__all__ = ["HybridKVStore", "RING_MARGIN", "layer_windows", "global_layers", "ring_tokens"]

RING_MARGIN = 1.0  # rewind margin of a ring, in windows (a 512 window keeps 1024 tokens)


def layer_windows(text_config) -> tuple[int, ...]:
    """Per layer of a transformers text config, its sliding window in tokens (0 = global); empty when
    no layer slides. From `layer_types` (Gemma 3: "sliding_attention" layers read the last
    `sliding_window` tokens); a config without layer types counts as global everywhere (its
    attention still gets the window it passes, over a store that keeps everything)."""
    window = int(getattr(text_config, "sliding_window", None) or 0)
    types = getattr(text_config, "layer_types", None)
    if not window or not types or "sliding_attention" not in types:
        return ()
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def global_layers(windows: tuple[int, ...], n_layers: int) -> int:
    """Layers whose KV grows with the context: those of `windows` that are 0 (all n_layers when
    `windows` is empty)."""
    return sum(1 for w in windows if not w) if windows else n_layers


def ring_tokens(window: int) -> int:
    """Tokens the ring of a `window` layer allocates (window + margin, plus `WindowRing`'s slack)."""
    return ring_capacity(window + int(window * RING_MARGIN))


class _Remapped:
    """The inner store's sparse step under model layer indices."""

    def __init__(self, sparse, inner_of: dict[int, int]):
        self._sparse, self._inner_of = sparse, inner_of

    def attend(self, layer: int, q: torch.Tensor, scaling: float):
        return self._sparse.attend(self._inner_of[layer], q, scaling)

    def wants_lookahead(self, layer: int) -> bool:
        """No lookahead fetch: it starts when the layer below attends through the inner store, and
        below a global layer is a sliding one (its ring)."""
        return False

    def __getattr__(self, name):  # selector, stats, ... as the inner step has them
        return getattr(self._sparse, name)


class HybridKVStore:
    """windows: per model layer, its sliding window (0 = global); inner: the store of the global layers
    in order (None when every layer slides); shape (B, Hkv, D), dtype, device: the rings'."""

    def __init__(self, windows: tuple[int, ...], inner, shape: tuple[int, int, int], dtype, device):
        self.n_layers = len(windows)
        self.windows, self.inner = tuple(windows), inner
        self._inner_of = {layer: i for i, layer in enumerate(j for j, w in enumerate(windows) if not w)}
        self._rings = {layer: WindowRing(w, int(w * RING_MARGIN), shape, dtype, device)  # ring_tokens(w)
                       for layer, w in enumerate(windows) if w}  # fmt: skip
        if (inner is None) != (not self._inner_of):
            raise ValueError("an inner store is needed exactly when some layer is global")
        sparse = getattr(inner, "sparse_attention", None)  # fixed for the store's life
        self._sparse = None if sparse is None else _Remapped(sparse, self._inner_of)

    # -- the KVStore protocol, model layer indices ------------------------------------------------
    def layer_len(self, layer: int) -> int:
        ring = self._rings.get(layer)
        return ring.count if ring is not None else self.inner.layer_len(self._inner_of[layer])

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        ring = self._rings.get(layer)
        if ring is not None:
            ring.append(k, v)
        else:
            self.inner.append(self._inner_of[layer], k, v)

    def read_layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A global layer's every token; a sliding layer's ring: at most its window + margin, at least
        window - 1 tokens (or all); its first position is layer_len - the length returned."""
        ring = self._rings.get(layer)
        return ring.read() if ring is not None else self.inner.read_layer(self._inner_of[layer])

    def attend(self, layer, q, scaling, sliding_window=None):
        ring = self._rings.get(layer)
        if ring is not None:
            return ring.attend(q, scaling)
        return self.inner.attend(self._inner_of[layer], q, scaling, sliding_window)

    def advance(self, layer: int, n: int) -> None:
        """Count n positions of sliding `layer` before what will be appended (a saved window)."""
        ring = self._rings.get(layer)
        if ring is None:
            raise ValueError(f"layer {layer} is a global layer: it stores every position")
        ring.advance(n)

    def truncate(self, n: int) -> None:
        """Forget positions >= n; when a ring cannot rewind exactly to n, forget everything."""
        if not all(r.can_rewind(n) for r in self._rings.values()):
            n = 0
        for ring in self._rings.values():
            if n == 0:
                ring.reset()
            else:
                ring.truncate(n)
        if self.inner is not None:
            self.inner.truncate(n)

    def stats(self) -> dict:
        out = dict(self.inner.stats()) if self.inner is not None else {}
        out["window_bytes"] = sum(r.nbytes for r in self._rings.values())
        out["tokens"] = max((self.layer_len(i) for i in range(self.n_layers)), default=0)
        return out

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
        for ring in self._rings.values():
            ring.reset()

    # -- what the engine, sessions and the eval ask of a sparse store ------------------------------
    @property
    def sparse_attention(self):
        return self._sparse  # built once: the decode loop asks for it at every layer of every step

    @property
    def prefill_observer(self):
        observe = getattr(self.inner, "prefill_observer", None)
        if observe is None:
            return None

        def remapped(layer, *args):
            if layer in self._inner_of:
                observe(self._inner_of[layer], *args)

        return remapped

    def __getattr__(self, name):
        # facts of the inner store that hold no layer index (a layer-indexed method must be mapped
        # above, never reached through here)
        if name not in _FORWARDED or self.__dict__.get("inner") is None:
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)


_FORWARDED = frozenset({"spec", "layout", "selector", "obs_window", "device", "batch", "n_kv_heads"})
