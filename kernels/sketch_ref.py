"""Scores of int8 low-rank key sketches (the `token` policy's), per body token: the torch twin and spec
of `sketch_score.sketch_scores_triton`, and the CPU engine's production path.

Shapes: B batch, H query heads, Hkv KV heads, G = H // Hkv, D head dim, r rank, N body tokens.
A token's sketch is its key's projection P^T k on the layer's basis P [Hkv, D, r] as int8 levels
[B, Hkv, r, N] with one scale per token, and the norm of its residual k - P P^T k: aux [B, Hkv, 2, N]
= (scale, res). With q~ = P^T q and q_res = q - P q~ per query head,

    est   = q~ . levels * scale                                   (q~ . k^, the low-rank logit)
    bound = est + half_step * |q~|_1 * scale + ||q_res|| * res    (>= q.k: invariant 5)

where half_step bounds |P^T k / scale - level| (the quantizer's: `policies/token.py` owns it and the
rounding that keeps scale and res from understating). The bound is the max over the G heads of the
group; the mass is softmax over the N tokens of scaling * est per query head, summed over the group.
"""

from __future__ import annotations

import torch

__all__ = ["sketch_scores_ref"]


def sketch_scores_ref(
    q: torch.Tensor,
    basis: torch.Tensor,
    levels: torch.Tensor,
    aux: torch.Tensor,
    scaling: float | None,
    half_step: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q [B, H, D]; basis [Hkv, D, r] fp32; levels [B, Hkv, r, N] int8; aux [B, Hkv, 2, N] (scale,
    res) -> (bound [B, Hkv, N] fp32, mass [B, Hkv, N] fp32, or None when scaling is None).

    levels and aux may be views of longer buffers ([..., :N]). These are the operations, in the order,
    TokenSketches.bound_and_mass ran before it dispatched here: CPU results are bit-identical to
    theirs (recorded evals depend on it; tests/kernels/test_kernel_sketch_score.py checks).
    """
    b, h, d = q.shape
    n_kv = basis.shape[0]
    qg = q.float().reshape(b, n_kv, h // n_kv, d)  # [B, Hkv, G, D]
    q_low = torch.matmul(qg, basis)  # [B, Hkv, G, r]
    q_res = (qg - torch.matmul(q_low, basis.transpose(-1, -2))).norm(dim=-1, keepdim=True)  # [B, Hkv, G, 1]
    levels = levels.float()  # [B, Hkv, r, N]
    aux = aux.float()  # [B, Hkv, 2, N]: a view when already fp32
    scale, res = aux[:, :, :1], aux[:, :, 1:]  # [B, Hkv, 1, N] each
    est = torch.matmul(q_low, levels) * scale  # q~ . k^ [B, Hkv, G, N]
    half_steps = half_step * q_low.abs().sum(-1, keepdim=True)  # [B, Hkv, G, 1]
    bound = torch.addcmul(torch.addcmul(est, half_steps, scale), q_res, res).amax(2)  # [B, Hkv, N]
    if scaling is None:
        return bound, None
    return bound, torch.softmax(est * scaling, dim=-1).sum(2)  # [B, Hkv, N]
