"""A decoder layer's decode query from a hidden state it has not seen yet: the lookahead of a
pipelined fetch (InfiniGen's observation, REFERENCES.md: the residual stream changes little from
one layer to the next, so layer l's input through layer l+1's query projection names much of what
layer l+1 will attend to, before layer l has run).

The query comes out of HF's own attention module — its input norm, q projection, q norm (Gemma 3,
Qwen 3) and RoPE, whatever the family — through a pass object whose `update` stores nothing and
whose `attend` stops the module once it holds the query: nothing is written, o_proj never runs.
"""

from __future__ import annotations

import torch

__all__ = ["next_query"]


class _Query(Exception):
    """Carries the query out of the attention module (caught in `next_query`)."""

    def __init__(self, q: torch.Tensor, scaling: float):
        super().__init__("query")
        self.q, self.scaling = q, scaling


class _QueryOnly:
    """A pass object that keeps nothing: the attention stops at its query."""

    def update(self, k, v, layer_idx, *args, **kwargs):
        return k, v

    def attend(self, layer, q, k, v, scaling, sliding_window):
        raise _Query(q, scaling)


def next_query(decoder_layer, h: torch.Tensor, position_embeddings, cache_kw: str) -> tuple[torch.Tensor, float]:
    """The post-RoPE query [B, H, 1, D] and logit scale `decoder_layer` would compute from hidden
    states h [B, 1, hidden] at the position of `position_embeddings` (its rotary (cos, sin));
    cache_kw: the attention's cache keyword (`hf_compat.cache_keyword`)."""
    p = _QueryOnly()
    attn = decoder_layer.self_attn
    x = decoder_layer.input_layernorm(h)
    try:
        attn(hidden_states=x, position_embeddings=position_embeddings, attention_mask=None, offload_pass=p,
             **{cache_kw: p})  # fmt: skip
    except _Query as got:
        scaling = got.scaling if got.scaling is not None else got.q.shape[-1] ** -0.5
        return got.q, scaling
    raise RuntimeError(f"{type(attn).__name__} returned without calling the attention function: "
                       "its query cannot be read through the offload seam")  # fmt: skip
