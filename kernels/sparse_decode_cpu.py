"""Sparse decode attention on CPU: the reference's semantics with fewer, larger torch ops.

On a CPU a small torch op costs about the same whatever its size (measured in
bench/results/sparse-smollm2.md), so decode speed is set by the op count. The reference
(`reference.sparse_decode_attention_ref`) handles every case — partial last chunks, short extras, empty
rows — with masks and a gather per pool; this path serves the case the tiered store hands it (every
row's selection full width, every extra token valid; on CPU the store's steps go through its
`WorkingSet` except h2o's and those that fetch) with one index computation for both pools, no masks and
no nan guards, and says None otherwise so the caller falls back to the reference. Same inputs and
outputs as the reference (its docstring is the spec); fp32 math.
"""

from __future__ import annotations

import torch

from .reference import _pool_rows, _row_of_head

__all__ = ["sparse_decode_attention_cpu"]


def sparse_decode_attention_cpu(q, k_pool, v_pool, block_table, body_len, extra_k=None, extra_v=None,
                                extra_len=None, scale=None):  # fmt: skip
    """(out [B, H, D], lse [B, H]) as the reference, or None when some row is not full width
    (body_len < M*C or extra_len < E) or the pools are not views this path can index."""
    b, h, d = q.shape
    n_slots, n_rows, chunk, _ = k_pool.shape
    _, n_kv, width = block_table.shape
    full = width * chunk
    if width == 0 or n_slots == 0 or bool((body_len != full).any()):
        return None
    if extra_k is not None and bool((extra_len != extra_k.shape[2]).any()):
        return None
    k_rows, v_rows = _pool_rows(k_pool), _pool_rows(v_pool)
    if k_rows is None or v_rows is None or k_rows[1] != v_rows[1]:
        return None
    (k_flat, step), (v_flat, _) = k_rows, v_rows
    rows = _row_of_head(b, n_kv, n_rows, k_pool.device)
    idx = (block_table.long() * step + rows).reshape(-1)  # [B*Hkv*M] entries of [C, D] chunks
    keys = k_flat.index_select(0, idx).view(b, n_kv, full, d)
    vals = v_flat.index_select(0, idx).view(b, n_kv, full, d)
    if extra_k is not None:
        keys, vals = torch.cat([keys, extra_k], 2), torch.cat([vals, extra_v], 2)
    scale = d**-0.5 if scale is None else scale
    qg = q.reshape(b, n_kv, h // n_kv, d).float()  # [B, Hkv, G, D]
    s = torch.matmul(qg, keys.float().transpose(-1, -2)) * scale  # [B, Hkv, G, N]
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    out = torch.matmul(torch.exp(s - lse), vals.float())  # [B, Hkv, G, D]
    return out.reshape(b, h, d).to(q.dtype), lse.reshape(b, h)
