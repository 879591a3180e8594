"""Which layers sparse decode attends to whole: those no chunk selection at the budget can serve.

Some layers spread their attention over the whole context (SmolLM2's layer 0: even the best choice of
16-token chunks at 1/16 of a 4k context keeps far less of its attention mass than for the other
layers, bench/results/recall-smollm2.txt). Selecting there loses mass whatever the policy; reading
the layer whole is exact. Measured at prefill, per layer: the recall of the *chunk oracle* for the
prompt's last queries (sinks + window + the k chunks holding the most of their attention mass, k the
layer's budget) — the ceiling of any selection.

A layer is kept whole when that ceiling is below `threshold`, at most `max(1, L // 8)` layers (the
lowest first: each whole layer reads its full context every step, as many tokens as ~1/budget
sparse layers), and only while its chunks fit in its GPU slots (the store checks: a whole layer that
had to stream from host or disk every step would cost what sparse decode exists to avoid).
"""

from __future__ import annotations

import torch

__all__ = ["oracle_recall", "whole_layers", "MAX_SHARE"]

MAX_SHARE = 8  # at most L // MAX_SHARE layers (at least one) are kept whole


def oracle_recall(mass: torch.Tensor, sinks: int, chunk: int, n_chunks: int, k: int) -> float:
    """Best recall of k chunks per row: mass [B, Hkv, n] attention mass of the observed queries per
    key (rows sum to the number of queries x group); the body is [sinks, sinks + n_chunks * chunk),
    everything else (sinks, window) is always kept. Mean over rows."""
    b, h, _ = mass.shape
    total = mass.sum(-1)  # [B, Hkv]
    body = mass[:, :, sinks : sinks + n_chunks * chunk].reshape(b, h, n_chunks, chunk).sum(-1)
    kept = total - body.sum(-1)  # sinks + window
    if k > 0 and n_chunks:
        kept = kept + body.topk(min(k, n_chunks), dim=-1).values.sum(-1)
    return float((kept / total.clamp(min=1e-30)).mean())


def whole_layers(recalls: list[float | None], threshold: float) -> frozenset[int]:
    """Layers to keep whole: ceiling recall below `threshold`, the lowest first, at most
    max(1, L // MAX_SHARE) of them. Layers without a measurement (None) are never chosen."""
    if threshold <= 0:
        return frozenset()
    low = sorted((r, i) for i, r in enumerate(recalls) if r is not None and r < threshold)
    cap = max(1, len(recalls) // MAX_SHARE)
    return frozenset(i for _, i in low[:cap])
