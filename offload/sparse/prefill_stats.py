"""Statistics a sparse KV store takes from prefill (see `TieredKVStore.prefill_observer`).

- the prompt's last `OBS_TAIL` post-RoPE queries per layer (`PrefillPass(keep_tail=...)`): snapkv and
  h2o score chunks by the attention those queries pay them;
- per layer, cos(h, h + attn(h)) averaged over the prompt's tokens (SqueezeAttention's measure of how
  much the layer's attention changes the hidden state), from `AttentionCosine`, a forward hook on the
  layer's attention module: HF's attention returns (o_proj output, weights), and the engine sets
  `h_in` to the layer's input before each chunk goes through the layer.
"""

from __future__ import annotations

import torch

__all__ = ["OBS_TAIL", "AttentionCosine"]

OBS_TAIL = 32  # prompt queries kept per layer (SnapKV's observation window)


class AttentionCosine:
    """Mean over tokens of cos(h_in, h_in + attn_out) for one layer; registers its hook at creation,
    removes it at `close()` (which returns the mean, or None if nothing was seen)."""

    def __init__(self, attn_module: torch.nn.Module):
        self.h_in: torch.Tensor | None = None  # [B, t, hidden], set by the engine per chunk
        self._sum, self._count = 0.0, 0
        self._handle = attn_module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        a = output[0] if isinstance(output, tuple) else output  # [B, t, hidden]
        h = self.h_in.float()
        self._sum += float(torch.nn.functional.cosine_similarity(h, h + a.float(), dim=-1).sum())
        self._count += h.shape[0] * h.shape[1]

    def close(self) -> float | None:
        self._handle.remove()
        return self._sum / self._count if self._count else None
