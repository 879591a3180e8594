"""`MassScores`: the state of the policies that score chunks by the attention mass they were paid
(`snapkv`, `h2o`): per layer a score and a live flag per chunk and KV head, [B, Hkv, capacity],
grown by doubling. The prompt's mass comes from prefill (`observe`: the last queries' attention,
summed over each chunk and the query group); until a layer has observed (a store reopened from a
session saved before this state was kept), it ranks by recency."""

from __future__ import annotations

import torch

from .policy import Geometry, PolicyState, SelectionPolicy

__all__ = ["MassScores"]


class MassScores(PolicyState):
    """score / alive [B, Hkv, cap] per layer (None until first used); observed[layer]."""

    def __init__(self, policy: SelectionPolicy, geometry: Geometry):
        super().__init__(policy, geometry)
        n = geometry.n_layers
        self.score: list[torch.Tensor | None] = [None] * n
        self.alive: list[torch.Tensor | None] = [None] * n
        self.observed = [False] * n

    def grown(self, layer: int, need: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's (score, alive), with room for `need` chunks."""
        s, g = self.score[layer], self.geometry
        if s is None or s.shape[-1] < need:
            cap = max(need, 64, 2 * (0 if s is None else s.shape[-1]))
            new_s = torch.zeros(g.batch, g.n_kv, cap, device=g.device)
            new_a = torch.zeros(g.batch, g.n_kv, cap, dtype=torch.bool, device=g.device)
            if s is not None:
                new_s[:, :, : s.shape[-1]] = s
                new_a[:, :, : s.shape[-1]] = self.alive[layer]
            self.score[layer], self.alive[layer] = new_s, new_a
        return self.score[layer], self.alive[layer]

    def observe(self, layer: int, mass: torch.Tensor, n_chunks: int) -> None:
        g, m = self.geometry, n_chunks
        body = mass[:, :, g.sinks : g.sinks + m * g.chunk].reshape(g.batch, g.n_kv, m, g.chunk)
        score, alive = self.grown(layer, m)
        score[:, :, :m] = body.sum(-1)
        alive[:, :, :m] = True
        self.observed[layer] = True

    def scores(self, layer, q, n_chunks, k, scaling, rows_k):
        g = self.geometry
        if not self.observed[layer]:  # no prefill statistics: recency
            pos = torch.arange(n_chunks, dtype=torch.float32, device=g.device)
            return pos.expand(g.batch, g.n_kv, n_chunks)
        return self.score[layer][:, :, :n_chunks]

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"observed": torch.tensor(self.observed)}
        for i, (s, a) in enumerate(zip(self.score, self.alive)):
            if s is not None:
                out[f"score.{i}"], out[f"alive.{i}"] = s.cpu(), a.cpu()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        dev = self.geometry.device
        self.observed = [bool(x) for x in state["observed"].tolist()]
        for i in range(self.geometry.n_layers):
            if f"score.{i}" in state:
                self.score[i] = state[f"score.{i}"].to(dev).clone()
                self.alive[i] = state[f"alive.{i}"].to(dev, torch.bool).clone()

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * 5 for s in self.score if s is not None)
