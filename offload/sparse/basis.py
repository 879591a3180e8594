"""A per-(layer, KV head) orthonormal basis of the keys, for the low-rank summaries (`token`,
`bound`): the top-r eigenvectors of the post-RoPE keys' second moment K^T K (uncentred: the mean
direction dominates, DESIGN §5), fixed from the first keys the layer stores (the prompt). Any
orthonormal P keeps the bounds valid; a good one makes them tight."""

from __future__ import annotations

import torch

__all__ = ["KeyBasis"]

_RES_SLACK = 1e-5  # relative slack on the residual norm: fp32 rounding must not break a bound


class KeyBasis:
    """basis [L, Hkv, D, r] fp32 on the device; `has[layer]`: fixed yet."""

    def __init__(self, n_layers: int, batch: int, n_kv: int, head_dim: int, rank: int, device):
        self.batch, self.n_kv, self.head_dim, self.rank = batch, n_kv, head_dim, rank
        self.basis = torch.zeros(n_layers, n_kv, head_dim, rank, device=device)
        self.has = [False] * n_layers

    def ensure(self, layer: int, keys: torch.Tensor) -> None:
        """Fix layer's basis from keys [R, N, D] (its first stored keys) unless it has one."""
        if self.has[layer]:
            return
        kf = keys.float().reshape(self.batch, self.n_kv, -1, self.head_dim)
        second = torch.einsum("bhnd,bhne->hde", kf, kf)  # [Hkv, D, D], summed over the batch
        _, vecs = torch.linalg.eigh(second)  # ascending eigenvalues; orthonormal columns
        self.basis[layer] = vecs[..., -self.rank :]
        self.has[layer] = True

    def project(self, layer: int, kf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks kf [B, Hkv, n, C, D] fp32 on the layer's basis: (P^T k [B, Hkv, n, C, r], the
        residual norm ||k - P P^T k|| [B, Hkv, n, C], rounded up by a relative slack)."""
        p = self.basis[layer][:, None]  # [Hkv, 1, D, r]
        proj = torch.matmul(kf, p)
        resid = (kf - torch.matmul(proj, p.transpose(-1, -2))).norm(dim=-1)
        return proj, resid * (1 + _RES_SLACK) + _RES_SLACK * kf.norm(dim=-1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"basis": self.basis.cpu(), "has_basis": torch.tensor(self.has)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.basis.copy_(state["basis"])
        self.has = [bool(x) for x in state["has_basis"].tolist()]

    @property
    def nbytes(self) -> int:
        return self.basis.numel() * 4
