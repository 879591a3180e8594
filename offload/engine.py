"""The engine: our own loop over HF's decoder layers.

Prefill is layer-major and chunked: for each layer, every chunk of the new tokens goes through HF's
decoder layer with exact attention over that layer's KV so far; the layer's new KV is then handed to
the store. Only one layer's KV, the hidden states of the new tokens and one chunk's activations are
alive at once, never the whole model's KV. Long prompts keep their hidden states in host memory and
stream them a chunk at a time (`prefill_hidden`). Decode is token-major through `DecodePass`.
"""

from __future__ import annotations

import inspect

import torch

from .attention import DecodePass, PrefillPass, RowsPass
from .hf_compat import cache_keyword
from .kvstore import KVStore
from .model import OffloadModel
from .next_query import next_query
from .prefill_hidden import hidden_on_host
from .sparse.prefill_stats import AttentionCosine

__all__ = ["Engine"]


class Engine:
    """Runs one sequence (batch 1) of `model` over `store`. Positions continue from the store's length."""

    def __init__(self, model: OffloadModel, store: KVStore):
        self.model, self.store = model, store
        self._device = model.device
        base = model.hf.model  # the decoder stack: embed_tokens, layers, norm, rotary_emb
        self._embed, self._layers, self._norm = base.embed_tokens, base.layers, base.norm
        self._rotary, self._lm_head = base.rotary_emb, model.hf.lm_head
        cfg = model.text_config
        self._layer_types = getattr(cfg, "layer_types", None)
        # Hybrid models (Gemma 3) keep one rotary table per layer type.
        self._rope_by_type = "layer_type" in inspect.signature(self._rotary.forward).parameters
        self._softcap = getattr(cfg, "final_logit_softcapping", None)
        self._cache_kw = cache_keyword(self._layers[0])  # `cache` from transformers 5.25, else `past_key_values`
        n_layers, self._n_kv, self._head_dim = model.kv_shape()

    @property
    def n_tokens(self) -> int:
        return self.store.layer_len(0)

    def _rope(self, h: torch.Tensor, pos: torch.Tensor, layer: int, cache: dict):
        kind = self._layer_types[layer] if self._rope_by_type and self._layer_types else None
        if kind not in cache:
            cache[kind] = self._rotary(h, pos, kind) if kind else self._rotary(h, pos)
        return cache[kind]

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = self._lm_head(self._norm(h)).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _embed_on_host(self, ids: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
        """The embeddings of ids [1, T] in a host buffer [1, T, hidden], computed chunk by chunk on the
        device; pinned when the device is CUDA, so the per-chunk copies are DMA."""
        w = self._embed.weight  # [V, hidden]
        pin = self._device.type == "cuda"
        h = torch.empty((1, ids.shape[1], w.shape[1]), dtype=w.dtype, pin_memory=pin)
        for s, e in spans:
            h[:, s:e] = self._embed(ids[:, s:e])
        return h

    @torch.inference_mode()
    def prefill(self, ids: list[int] | torch.Tensor, chunk: int | None = None, all_logits: bool = False,
                progress=None, hidden_host: bool | None = None) -> torch.Tensor:
        """Append `ids` to the sequence. Returns logits [T, V] (all_logits) or [V] for the last token,
        on the device.

        progress: optional callable(layers_done, n_layers, n_new_tokens), called after each layer.
        hidden_host: keep the new tokens' hidden states in host memory, streaming one chunk at a time
        to the device (True), on the device (False), or as `prefill_hidden.hidden_on_host` decides
        (None)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self._device).view(1, -1)
        t = ids.shape[1]
        if t == 0:
            raise ValueError("prefill needs at least one token")
        chunk = chunk or self.model.config.prefill_chunk
        n_prior = self.n_tokens
        pos = torch.arange(n_prior, n_prior + t, device=ids.device).view(1, -1)
        spans = [(s, min(s + chunk, t)) for s in range(0, t, chunk)]
        w = self._embed.weight
        if hidden_host is None:
            hidden_host = hidden_on_host(self._device, t, w.shape[1], w.element_size())
        # h: [1, T, hidden], on the device or in host memory; layers see a device copy of one chunk
        h = self._embed_on_host(ids, spans) if hidden_host else self._embed(ids)
        ropes = [dict() for _ in spans]  # per chunk: layer type -> (cos, sin)
        shape = (1, self._n_kv, n_prior + t, self._head_dim)
        k_buf = torch.empty(shape, dtype=h.dtype, device=self._device)
        v_buf = torch.empty_like(k_buf)
        n_layers = len(self._layers)
        observe = getattr(self.store, "prefill_observer", None)  # sparse stores take statistics (obs_window)
        for li, layer in enumerate(self._layers):
            if n_prior:  # a sliding layer's store returns its last window: it goes last
                k_old, v_old = self.store.read_layer(li)
                k_buf[:, :, n_prior - k_old.shape[2] : n_prior] = k_old
                v_buf[:, :, n_prior - v_old.shape[2] : n_prior] = v_old
            p = PrefillPass(k_buf, v_buf, n_prior, keep_tail=self.store.obs_window if observe else 0)
            cos = AttentionCosine(layer.self_attn) if observe else None
            try:
                for ci, (s, e) in enumerate(spans):
                    # x: [1, e - s, hidden] on the device: a view of h, or (host) a copy of its chunk.
                    # The copy is non-blocking from pinned memory and ordered before the layer's kernels
                    # on the stream; the blocking copy back below is what overwrites that host chunk.
                    x = h[:, s:e].to(self._device, non_blocking=True, copy=hidden_host)
                    if cos is not None:
                        cos.h_in = x  # the layer's input: read by the hook before it is replaced
                    out = layer(
                        x, attention_mask=None, position_ids=pos[:, s:e], use_cache=True,
                        position_embeddings=self._rope(x, pos[:, s:e], li, ropes[ci]), offload_pass=p,
                        **{self._cache_kw: p},
                    )
                    h[:, s:e] = out[0] if isinstance(out, tuple) else out
            finally:  # the hook must go even if a layer raises
                squeeze = cos.close() if cos is not None else None
            self.store.append(li, *p.new_kv())
            if observe:
                observe(li, p.q_tail, k_buf[:, :, : p.n], p.scaling, squeeze)
            if progress is not None:
                progress(li + 1, n_layers, t)
        if not all_logits:
            return self._logits(h[0, -1:].to(self._device))[0]
        # chunk by chunk on either path (one GEMM's row blocking, so both give the same bits); the fp32
        # [T, V] output is the only full-length buffer, not the norm's output or the model-dtype logits
        logits = torch.empty((t, self._lm_head.weight.shape[0]), dtype=torch.float32, device=self._device)
        for s, e in spans:
            logits[s:e] = self._logits(h[0, s:e].to(self._device))
        return logits

    @torch.inference_mode()
    def decode(self, token: int) -> torch.Tensor:
        """Append one token and return the next-token logits [V]."""
        ids = torch.tensor([[token]], dtype=torch.long, device=self._device)
        return self._step(ids, self.n_tokens, DecodePass(self.store))[0]

    @torch.inference_mode()
    def decode_rows(self, tokens: list[int], stores: list[KVStore]) -> torch.Tensor:
        """One decode step of len(tokens) sequences of equal length, token j appended to stores[j]
        (e.g. one prompt under several store configs). Returns logits [J, V]. Rows share the
        matmuls, so a row may differ from `decode` on its own store by fp rounding."""
        n = stores[0].layer_len(0)
        if any(s.layer_len(0) != n for s in stores) or len(stores) != len(tokens):
            raise ValueError("decode_rows needs one store per token, all of the same length")
        ids = torch.tensor(tokens, dtype=torch.long, device=self._device).view(-1, 1)
        return self._step(ids, n, RowsPass(stores))

    def _step(self, ids: torch.Tensor, n: int, p) -> torch.Tensor:
        """ids [J, 1] at position n through every layer with pass `p`; logits [J, V]."""
        pos = torch.full_like(ids, n)
        h, ropes = self._embed(ids), {}  # [J, 1, hidden]
        ahead = getattr(p, "wants_lookahead", None)
        last = len(self._layers) - 1
        for li, layer in enumerate(self._layers):
            if ahead is not None and li < last and ahead(li + 1):  # layer li+1's query, guessed from li's input
                rope = self._rope(h, pos, li + 1, ropes)
                p.lookahead(li + 1, *next_query(self._layers[li + 1], h, rope, self._cache_kw))
            out = layer(
                h, attention_mask=None, position_ids=pos, use_cache=True,
                position_embeddings=self._rope(h, pos, li, ropes), offload_pass=p, **{self._cache_kw: p},
            )
            h = out[0] if isinstance(out, tuple) else out
        return self._logits(h[:, -1])

    def truncate(self, n: int) -> int:
        """Rewind the sequence to its first n tokens; returns the tokens kept: n, or fewer when the
        store cannot rewind that far exactly (a sliding-window ring past its margin starts over)."""
        self.store.truncate(n)
        return self.n_tokens
