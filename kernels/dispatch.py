"""The public ops: Triton when the tensors are on CUDA, the torch reference otherwise.

The Triton interpreter never runs here, whatever TRITON_INTERPRET says: CPU tensors always take the
reference (which is what the CPU engine wants: vectorised torch, fp32). Triton modules are imported
on first CUDA use, so machines without Triton (it ships for Linux only) still import this package.
Shapes and layouts: see each reference function in `reference.py` (and `sketch_ref.py`), the spec.
The Triton launchers (`*_triton` in sparse_decode.py, token_decode.py, chunk_score.py,
sketch_score.py) are importable from their modules for tests and benchmarks. `offload.kernels` itself
is a namespace (no `__init__.py`, so the top-level folder never shadows Hugging Face's `kernels`
package): import the ops from here.
"""

from __future__ import annotations

import torch

from . import reference as ref
from .sketch_ref import sketch_scores_ref

__all__ = [
    "sparse_decode_attention",
    "token_decode_attention",
    "merge_attention",
    "chunk_scores",
    "sketch_scores",
    "top_chunks",
    "causal_prefill_attention",
    "lower_right_prefill_attention",
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


def token_decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    chunk_slot: torch.Tensor,
    token_ids: torch.Tensor,
    row_len: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_len: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention over per-row selected tokens read from the pool by slot, plus sinks/window:
    (out [B, H, D], lse [B, H]). q [B, H, D]; k_pool, v_pool [S, B*Hkv, C, D]; chunk_slot [M] the
    layer's chunk -> global slot; token_ids [B*Hkv, K] body positions; row_len [B*Hkv] ids each row
    reads; extra as `sparse_decode_attention`. See `reference.token_decode_attention_ref`."""
    if q.is_cuda:
        from .token_decode import token_decode_attention_triton

        return token_decode_attention_triton(
            q, k_pool, v_pool, chunk_slot, token_ids, row_len, extra_k, extra_v, extra_len, scale
        )
    return ref.token_decode_attention_ref(
        q, k_pool, v_pool, chunk_slot, token_ids, row_len, extra_k, extra_v, extra_len, scale
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


def sketch_scores(
    q: torch.Tensor,
    basis: torch.Tensor,
    levels: torch.Tensor,
    aux: torch.Tensor,
    scaling: float | None,
    half_step: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per body token of int8 low-rank sketches: (bound [B, Hkv, N] fp32, an upper bound of q.k over
    the group; mass [B, Hkv, N] fp32, softmax of scaling * the low-rank logit per head summed over the
    group, None when scaling is None). q [B, H, D]; basis [Hkv, D, r] fp32; levels [B, Hkv, r, N] int8;
    aux [B, Hkv, 2, N] (scale, residual norm); half_step: the quantizer's error per level step.
    See `sketch_ref.sketch_scores_ref`."""
    if q.is_cuda:
        from .sketch_score import sketch_scores_triton

        return sketch_scores_triton(q, basis, levels, aux, scaling, half_step)
    return sketch_scores_ref(q, basis, levels, aux, scaling, half_step)


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
    [B, Lq, H, D]. On CUDA without a window: `lower_right_prefill_attention` (flash attention, no
    [Lq, Lk] mask: a 512-token chunk at 200k would need a 100 MB one per call). Elsewhere SDPA with an
    explicit mask (`reference.prefill_attention_ref`; torch's CPU kernels would build that mask from a
    lower-right bias anyway)."""
    if q.is_cuda and q.shape[2] > 1 and (sliding_window is None or k.shape[2] <= sliding_window):
        return lower_right_prefill_attention(q, k, v, scale)
    return ref.prefill_attention_ref(q, k, v, scale, sliding_window)


def lower_right_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  scale: float | None = None) -> torch.Tensor:  # fmt: skip
    """`prefill_attention_ref` without a window through torch's lower-right causal bias
    (`torch.nn.attention.bias.causal_lower_right`): SDPA's flash kernel on CUDA, no mask tensor."""
    from torch.nn.attention.bias import causal_lower_right

    lq, lk = q.shape[2], k.shape[2]
    groups = q.shape[1] // k.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k.to(q.dtype), v.to(q.dtype), attn_mask=causal_lower_right(lq, lk), scale=scale, enable_gqa=groups > 1
    )
    return out.transpose(1, 2).contiguous()

