"""A per-(layer, KV head) orthonormal basis of the keys, for the low-rank summaries (`token`,
`bound`): the top-r eigenvectors of the post-RoPE keys' second moment K^T K (uncentred: the mean
direction dominates, DESIGN §5), fixed from the first keys the layer stores (the prompt). Any
orthonormal P keeps the bounds valid; a good one makes them tight."""

from __future__ import annotations

import torch

__all__ = ["KeyBasis"]


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

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"basis": self.basis.cpu(), "has_basis": torch.tensor(self.has)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.basis.copy_(state["basis"])
        self.has = [bool(x) for x in state["has_basis"].tolist()]

    @property
    def nbytes(self) -> int:
        return self.basis.numel() * 4
