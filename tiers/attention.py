"""Attention over keys that arrive in parts (sinks + a round of pool chunks + window), merged exactly.

When a layer's selection is larger than its GPU budget, the store attends in rounds of at most
`budget` chunks and merges the rounds with their log-sum-exp — flash-decoding's split-K, so the
result equals one softmax over all keys. Keys carry explicit positions, so causality and sliding
windows need no contiguity, and `row_mask` lets each KV head see its own subset of a round's chunks
(per-head selection) while the round is gathered once.

Torch reference math in fp32; a Triton kernel over the pool's block table will replace it.
Shapes: R = batch * Hkv rows, g query heads per KV head, Lq queries, N keys in the part, D head dim.
"""

from __future__ import annotations

import torch

__all__ = ["partial_attention", "merge_partials", "to_rows", "from_rows"]

_MAX_SCORES = 1 << 26  # score elements per block (256 MiB fp32): bounds memory for long Lq


def to_rows(q: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """q [B, H, Lq, D] -> [R, g, Lq, D] with R = B*Hkv (head h uses KV head h // g, as HF's repeat_kv)."""
    b, h, lq, d = q.shape
    return q.reshape(b * n_kv_heads, h // n_kv_heads, lq, d)


def from_rows(out: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """out [R, g, Lq, D] -> [B, Lq, H, D] contiguous, in `dtype`."""
    r, g, lq, d = out.shape
    return out.reshape(batch, r // batch * g, lq, d).transpose(1, 2).to(dtype).contiguous()


def partial_attention(q, k, v, kpos, qpos, scaling, sliding_window=None, row_mask=None):
    """Softmax attention of q over one part of the keys.

    q [R, g, Lq, D]; k, v [R, N, D]; kpos int64 [N] and qpos int64 [Lq] absolute positions;
    row_mask bool [R, N] or None (False hides a key from that row).
    Returns out [R, g, Lq, D] (normalized over this part) and lse [R, g, Lq], both fp32; a query
    that sees no key of the part gets out 0 and lse -inf.
    """
    r, g, lq, d = q.shape
    n = k.shape[1]
    # batched over rows, the g query heads and the queries of a row side by side: [R, g*lq, N]
    # (a broadcast matmul over [R, 1, D, N] would copy k once per query head)
    kt = k.float().transpose(1, 2)  # [R, D, N]
    vf = v.float()  # [R, N, D]
    step = max(1, _MAX_SCORES // max(1, r * g * n))
    outs, lses = [], []
    for s0 in range(0, lq, step):
        qp = qpos[s0 : s0 + step]
        lb = qp.shape[0]
        keep = kpos[None, :] <= qp[:, None]  # [lq_blk, N]
        if sliding_window is not None:
            keep = keep & (kpos[None, :] > qp[:, None] - sliding_window)
        keep = keep[None, None]  # [1, 1, lq_blk, N]
        if row_mask is not None:
            keep = keep & row_mask[:, None, None, :]
        qb = q[:, :, s0 : s0 + step].float().reshape(r, g * lb, d)
        scores = torch.bmm(qb, kt).view(r, g, lb, n) * scaling  # [R, g, lq_blk, N]
        scores = scores.masked_fill(~keep, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # -inf where nothing is visible
        p = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
        outs.append(torch.bmm(p.view(r, g * lb, n), vf).view(r, g, lb, d))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Combine two parts' (out, lse) into the (out, lse) of their union. All fp32."""
    if out_a is None:
        return out_b, lse_b
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(lse), lse, 0.0)
    wa = torch.exp(lse_a - safe)[..., None]  # exp(-inf) = 0 for an empty part
    wb = torch.exp(lse_b - safe)[..., None]
    return out_a * wa + out_b * wb, lse
