"""`model_fingerprint`: what makes a saved KV cache reusable by a model, as one sha256.

Two models give the same fingerprint when their config (runtime-only switches dropped), weight names,
shapes, dtypes, a strided sample of weight values and tokenizer agree: sessions (session.py) refuse
a cache made by another model with it.
"""

from __future__ import annotations

import hashlib
import json

import torch

__all__ = ["model_fingerprint"]

_VOLATILE = {"transformers_version", "torch_dtype", "dtype", "use_cache", "output_attentions",
             "output_hidden_states", "return_dict", "attn_implementation"}  # fmt: skip


def _clean_config(obj):
    """A config dict without runtime-only keys (private ones, dtype, output switches)."""
    if isinstance(obj, dict):
        return {str(k): _clean_config(v) for k, v in obj.items()
                if not str(k).startswith("_") and k not in _VOLATILE}  # fmt: skip
    if isinstance(obj, (list, tuple)):
        return [_clean_config(v) for v in obj]
    return obj


def _tokenizer_digest(tokenizer) -> str:
    if tokenizer is None:
        return ""
    if isinstance(tokenizer, (str, bytes)):
        return tokenizer if isinstance(tokenizer, str) else tokenizer.hex()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    text += json.dumps(getattr(tokenizer, "chat_template", None), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(hf_config, weights, tokenizer=None) -> str:
    """sha256 hex of what makes a KV cache reusable: the model config (runtime switches dropped),
    weight names/shapes/dtypes, a strided sample of weight values when tensors are given (64 values
    per tensor: tells fine-tunes of one architecture apart, cheaply), and the tokenizer.

    hf_config: a transformers PretrainedConfig or a dict; weights: a mapping name -> tensor (e.g. a
    state_dict) or -> (shape, dtype), or an iterable of (name, shape, dtype); tokenizer: a HF
    tokenizer, a precomputed digest string, or None."""
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    h = hashlib.sha256(json.dumps(_clean_config(cfg), sort_keys=True, default=str).encode())
    items = weights.items() if hasattr(weights, "items") else ((n, (s, d)) for n, s, d in weights)
    for name, w in sorted(items, key=lambda kv: kv[0]):
        if isinstance(w, torch.Tensor):
            flat = w.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64].to("cpu", torch.float32)
            h.update(f"{name}|{list(w.shape)}|{w.dtype}|".encode() + sample.numpy().tobytes())
        else:
            shape, dtype = w
            h.update(f"{name}|{list(shape)}|{dtype}|".encode())
    h.update(_tokenizer_digest(tokenizer).encode())
    return h.hexdigest()
