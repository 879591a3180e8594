"""The public ops: Triton when the tensors are on CUDA, the torch reference otherwise.

The Triton interpreter never runs here, whatever TRITON_INTERPRET says: CPU tensors always take the
reference (which is what the CPU engine wants: vectorised torch, fp32). Triton modules are imported
on first CUDA use, so machines without Triton (it ships for Linux only) still import this package.
Shapes and layouts: see each reference function in `reference.py`, the spec. The Triton launchers
(`*_triton` in sparse_decode.py, chunk_score.py) are importable from their modules for tests and
benchmarks. `offload.kernels` itself is a namespace (no `__init__.py`, so the top-level folder never
shadows Hugging Face's `kernels` package): import the ops from here.
"""

from __future__ import annotations

import torch

from . import reference as ref

__all__ = [
    "sparse_decode_attention",
    "merge_attention",
    "chunk_scores",
    "top_chunks",
    "causal_prefill_attention",
]


def sparse_decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    body_len: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_len: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention over a block-table selection plus sinks/window: (out [B, H, D], lse [B, H]).

    q [B, H, D]; k_pool, v_pool [S, Hkv, C, D] or [S, B*Hkv, C, D] (rows of every sequence, tiers'
    layout: GpuPool.k_pool / v_pool); block_table [B, Hkv, M] slot ids; body_len [B, Hkv]
    tokens; extra_k, extra_v [B, Hkv, E, D] with extra_len [B] (sinks + window, any order).
    See `reference.sparse_decode_attention_ref`.
    """
    if q.is_cuda:
        from .sparse_decode import sparse_decode_attention_triton

        return sparse_decode_attention_triton(
            q, k_pool, v_pool, block_table, body_len, extra_k, extra_v, extra_len, scale
        )
    return ref.sparse_decode_attention_ref(
        q, k_pool, v_pool, block_table, body_len, extra_k, extra_v, extra_len, scale
    )


def merge_attention(out_a, lse_a, out_b, lse_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets from their (out, lse). Torch on every device:
    a few elementwise ops per head, not worth a kernel."""
    return ref.merge_attention_ref(out_a, lse_a, out_b, lse_b)


def chunk_scores(
    q: torch.Tensor,
    kmin: torch.Tensor,
    kmax: torch.Tensor,
    basis: torch.Tensor | None = None,
    res_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upper bounds [B, Hkv, n] fp32 of each chunk's best q.k (Quest, or low rank with basis/res_max).

    q [B, H, D]; kmin, kmax [Bk, Hkv, n, D] (or [.., r] with basis [Hkv, D, r], res_max [Bk, Hkv, n]).
    See `reference.chunk_score_ref`.
    """
    if q.is_cuda:
        from .chunk_score import chunk_score_triton

        return chunk_score_triton(q, kmin, kmax, basis, res_max)
    return ref.chunk_score_ref(q, kmin, kmax, basis, res_max)


def top_chunks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, Hkv, k] int32 (unordered) of the k best chunks per KV head; torch.topk everywhere
    until a GPU measurement says a fused kernel pays."""
    return ref.top_chunks_ref(scores, k)


def causal_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal, bottom-right aligned GQA attention: q [B, H, Lq, D], k, v [B, Hkv, Lk, D] ->
    [B, Lq, H, D]. SDPA with an explicit mask on every device (a Triton twin, never measured against
    it on a GPU, was removed as dead code)."""
    return ref.prefill_attention_ref(q, k, v, scale, sliding_window)

