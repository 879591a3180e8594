"""The seam between transformers' attention modules and offload's engine.

HF's attention module projects q/k/v and applies RoPE, calls the cache's `update(k, v, layer_idx)` (from
transformers 5.25 with `kwargs=...` too) and then the registered attention function. The engine passes
one *pass object* both as the cache (`cache=` or `past_key_values=`, see `hf_compat.cache_keyword`) and
as the `offload_pass` keyword (HF forwards unknown keywords from the decoder layer down to the attention
function), so runtime state reaches the attention without any module global:

- `PrefillPass`: layer-major prefill. `update` writes the chunk's k/v into the layer's working buffer
  (prior tokens + this prompt) and returns everything so far; `attend` is exact causal attention.
- `DecodePass`: token-by-token decode. `update` appends the token to the KV store; `attend` runs the
  store's sparse decode step when it has one (`sparse_attention`: its selection policy and budget),
  else the store's exact attention.

The mask argument is always None (the name is not in `AttentionMaskInterface`): causality is applied
here, bottom-right aligned, as DESIGN.md §5 requires.
"""

from __future__ import annotations

import torch

from .kernels.dispatch import causal_prefill_attention
from .kvstore import KVStore

__all__ = ["ATTN_NAME", "register_attention", "PrefillPass", "DecodePass", "RowsPass", "decode_attend"]

ATTN_NAME = "offload"


def offload_attention(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    offload_pass=None,
    **kwargs,
):
    """AttentionInterface entry. query [B, H, Lq, D]; key/value [B, Hkv, n, D] as `update` returned.
    Returns ([B, Lq, H, D] contiguous, None)."""
    if offload_pass is None:
        raise RuntimeError(
            "the 'offload' attention runs only inside offload's engine (use offload.generate); "
            "for a plain forward pass load the model with offload.loading.load_reference"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out = offload_pass.attend(module.layer_idx, query, key, value, scaling, sliding_window)
    return out, None


def register_attention() -> None:
    """Register `offload_attention` under ATTN_NAME with transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, offload_attention)


class PrefillPass:
    """Exact attention for one layer of layer-major prefill.

    k_buf, v_buf: [B, Hkv, n_prior + T, D] working buffers whose first `n_prior` positions already hold
    the layer's earlier tokens (a previous chat turn); chunks of the T new tokens are appended in order.
    """

    def __init__(self, k_buf: torch.Tensor, v_buf: torch.Tensor, n_prior: int, keep_tail: int = 0):
        self.k_buf, self.v_buf = k_buf, v_buf
        self.n_prior = self.n = n_prior
        # keep_tail > 0: remember the last keep_tail queries [B, H, t, D] and the scale (sparse
        # stores score chunks by the prompt's last queries: snapkv, h2o)
        self.keep_tail, self.q_tail, self.scaling = keep_tail, None, None

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        t = k.shape[2]
        self.k_buf[:, :, self.n : self.n + t] = k
        self.v_buf[:, :, self.n : self.n + t] = v
        self.n += t
        return self.k_buf[:, :, : self.n], self.v_buf[:, :, : self.n]

    def attend(self, layer, q, k, v, scaling, sliding_window):
        if self.keep_tail:
            tail = q if self.q_tail is None else torch.cat([self.q_tail, q], dim=2)
            self.q_tail, self.scaling = tail[:, :, -self.keep_tail :].clone(), scaling
        if sliding_window is not None:  # keys before the first query's window are never read
            first = max(0, k.shape[2] - q.shape[2] - sliding_window + 1)
            k, v = k[:, :, first:], v[:, :, first:]
        return causal_prefill_attention(q, k, v, scaling, sliding_window)

    def new_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The k/v of the tokens this pass added: [B, Hkv, T, D] views."""
        return self.k_buf[:, :, self.n_prior : self.n], self.v_buf[:, :, self.n_prior : self.n]


def decode_attend(store: KVStore, layer: int, q: torch.Tensor, scaling: float, sliding_window: int | None):
    """One decode query q [B, H, 1, D] over `store`: its sparse step when it has one and selects
    (sliding-window layers — Gemma 3 — read at most their window: nothing to select there), else
    exact. Returns [B, 1, H, D]."""
    sparse = getattr(store, "sparse_attention", None)
    if sparse is not None and sliding_window is None:
        out = sparse.attend(layer, q, scaling)
        if out is not None:  # None: the budget covers every unit
            return out
    return store.attend(layer, q, scaling, sliding_window)


class DecodePass:
    """One decode step: each layer's new token goes to the store, then `decode_attend`."""

    def __init__(self, store: KVStore):
        self.store = store

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.store.append(layer_idx, k, v)
        return k, v

    def attend(self, layer, q, k, v, scaling, sliding_window):
        return decode_attend(self.store, layer, q, scaling, sliding_window)

    def wants_lookahead(self, layer: int) -> bool:
        """The store's sparse step would fetch `layer`'s guessed rows ahead (`tiers/lookahead.py`)."""
        sparse = getattr(self.store, "sparse_attention", None)
        return sparse is not None and sparse.wants_lookahead(layer)

    def lookahead(self, layer: int, q: torch.Tensor, scaling: float) -> None:
        """q [B, H, 1, D]: the query `layer` is expected to ask, before the layer below runs."""
        self.store.sparse_attention.lookahead(layer, q, scaling)


class RowsPass:
    """One decode step of several independent sequences, row j of the batch over `stores[j]`.

    The decoder layers' matmuls then read the weights once for all rows (the eval decodes one
    prompt under many selection policies at once); attention stays per row and per store."""

    def __init__(self, stores: list[KVStore]):
        self.stores = stores

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        for j, store in enumerate(self.stores):
            store.append(layer_idx, k[j : j + 1], v[j : j + 1])
        return k, v

    def attend(self, layer, q, k, v, scaling, sliding_window):
        outs = [decode_attend(s, layer, q[j : j + 1], scaling, sliding_window) for j, s in enumerate(self.stores)]
        return torch.cat(outs, dim=0)
