"""Sparse decode's chunk-selection policies behind the attention-recall interface (policies.py).

`bound`, `token`, `quest`, `landmark`, `snapkv`, `h2o` select whole chunks as `TieredKVStore` does (see
offload/tiers/selection.py): the keys are laid out as the store lays them out — `sinks` tokens, body
chunks of C tokens, then the window (the last `window` tokens plus the tail that does not fill a
chunk). The harness keeps only the last `window` tokens for free, so the partial tail is paid from
the budget first; the rest buys top-scoring chunks (k = rest // C). Abstracts come from the same
`ChunkAbstracts` the store uses; the low-rank basis of a layer is fixed at its first step (the
prompt's keys), as at prefill.

`oracle` (recall only, not a store policy): the top chunks by their exact attention mass at this
step — the ceiling of any chunk selection at the budget, against which the others are read. `token`
selects single tokens (a "chunk" of 1), as the store does by default; `token8` in 8-token chunks.

Differences to the store, forced by the interface (one query, all keys): `snapkv` observes the
first decode step's query instead of the prompt's last 32 queries; `h2o` starts from that query's
full attention and then accumulates the mass each step's selection receives, evicting what it drops.
"""

from __future__ import annotations

import torch

from ..config import SPARSE_CHUNK, TOKEN_CHUNK, OffloadConfig
from ..tiers.abstracts import ChunkAbstracts
from ..tiers.selection import token_ranking
from .policies import register_policy

__all__ = ["ChunkPolicy", "CHUNK"]

CHUNK = SPARSE_CHUNK  # OffloadConfig().chunk with a budget (policy "token": TOKEN_CHUNK)
RANK = OffloadConfig().rank
BOUND_SHARE = OffloadConfig().bound_share  # token: share of k picked by the bound, the rest by mass


class ChunkPolicy:
    """Top-k chunks by a per-chunk score; `kind` picks the score (see module doc)."""

    respects_budget = True

    def __init__(self, name: str, kind: str, sinks: int = 4, window: int = 64, chunk: int = CHUNK,
                 rank: int = RANK, bound_share: float = BOUND_SHARE):  # fmt: skip
        self.name, self.kind, self.bound_share = name, kind, bound_share
        self.sinks, self.window, self.chunk, self.rank = sinks, window, chunk, rank
        self._basis: dict[int, torch.Tensor] = {}
        self._score: dict[int, torch.Tensor] = {}  # snapkv / h2o: [Hkv, m]
        self._alive: dict[int, torch.Tensor] = {}
        self._last_t: dict[int, int] = {}

    def _layout(self, t: int) -> tuple[int, int]:
        """(body chunks m, first token of the window) for t tokens, as ChunkLayout does."""
        m = max(0, (t - self.sinks - self.window) // self.chunk)
        return m, self.sinks + m * self.chunk

    def select(self, layer, query, keys, budget):
        """budget: tokens, or a list of tokens per KV head (the store's adaptive split of token
        selections): each head its best k_h, as the store ranks them."""
        n_kv, t, d = keys.shape
        rows = None
        if isinstance(budget, (list, tuple)):
            rows = budget if len(set(budget)) > 1 else None
            budget = max(budget)
        if t < self._last_t.get(layer, 0):  # a new sequence: forget per-layer state
            for state in (self._basis, self._score, self._alive):
                state.pop(layer, None)
        self._last_t[layer] = t
        m, wstart = self._layout(t)
        tail = max(0, t - self.window - wstart)  # window tokens the harness does not keep for free
        mask = torch.zeros(n_kv, t, dtype=torch.bool, device=keys.device)
        mask[:, wstart : wstart + min(tail, budget)] = True
        k = min(m, max(0, budget - tail) // self.chunk)
        if m == 0:
            return mask
        body = keys[:, self.sinks : wstart].reshape(n_kv, m, self.chunk, d)
        rows_k = None
        if rows is not None:  # [1, Hkv, 1]: each head's k
            rows_k = torch.tensor([min(m, max(0, b - tail) // self.chunk) for b in rows]).view(1, n_kv, 1)
        scores = self._scores(layer, query, keys, body, k, rows_k)  # [Hkv, m]
        if k:
            idx = scores.topk(k, dim=-1).indices  # [Hkv, k], best first
            tok = (self.sinks + idx[..., None] * self.chunk + torch.arange(self.chunk, device=keys.device))
            if rows_k is not None:  # past a head's own k: token 0 (a sink, kept anyway)
                tok = tok.masked_fill((torch.arange(k) >= rows_k[0])[..., None], 0)
            mask.scatter_(1, tok.reshape(n_kv, -1), True)
        if self.kind == "h2o":
            self._h2o_step(layer, query, keys, mask, m, idx if k else None)
        return mask

    def _scores(self, layer, query, keys, body, k, rows_k=None):
        n_kv, m, c, d = body.shape
        if self.kind == "oracle":  # the chunks' true attention mass: the best any chunk choice can do
            return self._mass(query, keys)[:, self.sinks : self.sinks + m * c].reshape(n_kv, m, c).sum(-1)
        if self.kind in ("lowrank", "token", "quest", "mean"):
            ab = ChunkAbstracts(1, 1, n_kv, d, self.kind, self.rank, keys.device, capacity=m, chunk=c)
            if self.kind in ("lowrank", "token"):
                if layer not in self._basis:
                    ab.ensure_basis(0, keys)
                    self._basis[layer] = ab.basis[0].clone()
                ab.basis[0], ab.has_basis[0] = self._basis[layer], True
            if m:
                ab.add(0, 0, body.reshape(n_kv, m * c, d))  # every chunk in one pass, as prefill
            if self.kind == "token":  # as Selector.select
                return token_ranking(ab, 0, query[None], k, self.bound_share, d**-0.5, rows_k=rows_k)[0]
            return ab.scores(0, query[None])[0]
        score = self._score.get(layer)
        if score is None:  # first step: this query's full attention, summed per chunk and group
            mass = self._mass(query, keys)[:, self.sinks : self.sinks + m * c]
            score = mass.reshape(n_kv, m, c).sum(-1)
            self._alive[layer] = torch.ones(n_kv, m, dtype=torch.bool, device=keys.device)
        if score.shape[1] < m:  # chunks that left the window since
            grow = m - score.shape[1]
            if self.kind == "snapkv":
                fill = torch.full((n_kv, grow), float("inf"), device=keys.device)
            else:
                alive = self._alive[layer]
                fill = ((score * alive).sum(-1) / alive.sum(-1).clamp(min=1))[:, None].expand(n_kv, grow)
                self._alive[layer] = torch.cat([alive, torch.ones(n_kv, grow, dtype=torch.bool,
                                                                  device=keys.device)], 1)  # fmt: skip
            score = torch.cat([score, fill], dim=1)
        self._score[layer] = score
        if self.kind == "h2o":
            return score.masked_fill(~self._alive[layer], float("-inf"))
        return score

    @staticmethod
    def _mass(query, keys, keep=None):
        """Attention probabilities of query [H, D] over keys [Hkv, T, D] (keep: bool [Hkv, T]),
        summed over each KV head's group: [Hkv, T]."""
        n_kv, t, d = keys.shape
        g = query.shape[0] // n_kv
        s = torch.einsum("kgd,ktd->kgt", query.float().reshape(n_kv, g, d), keys.float()) * d**-0.5
        if keep is not None:
            s = s.masked_fill(~keep[:, None, :], float("-inf"))
        return torch.softmax(s, dim=-1).sum(1)

    def _h2o_step(self, layer, query, keys, mask, m, idx):
        alive = torch.zeros_like(self._alive[layer])
        if idx is not None:
            alive.scatter_(1, idx, True)
        self._alive[layer] = alive  # evicting: dropped chunks never return
        keep = mask.clone()
        keep[:, : self.sinks] = True
        keep[:, max(0, keys.shape[1] - self.window) :] = True
        mass = self._mass(query, keys, keep)[:, self.sinks : self.sinks + m * self.chunk]
        self._score[layer] = self._score[layer] + mass.reshape(keys.shape[0], m, self.chunk).sum(-1)


def _factory(name: str, kind: str, chunk: int):
    def make(sinks: int = 4, window: int = 64) -> ChunkPolicy:
        return ChunkPolicy(name, kind, sinks=sinks, window=window, chunk=chunk)

    return make


def _unit(policy: str) -> int:
    """Tokens per unit the store selects for `policy` by default: 1 when it picks single tokens
    (`token`, OffloadConfig.select_unit), else its chunk (OffloadConfig.chunk: 16)."""
    cfg = OffloadConfig(budget=1, policy=policy)
    return 1 if cfg.selects_tokens else cfg.chunk


# each store policy at the unit the store gives it by default; `token8` is `token` picking 8-token
# chunks (select_unit="chunk"); `oracle` (16 tokens), `oracle8` and `oracle1` (single tokens) the
# ceilings of those units
for _name, _kind in (("bound", "lowrank"), ("token", "token"), ("quest", "quest"), ("landmark", "mean"),
                     ("snapkv", "snapkv"), ("h2o", "h2o")):  # fmt: skip
    register_policy(_name)(_factory(_name, _kind, _unit(_name)))
register_policy("token8")(_factory("token8", "token", TOKEN_CHUNK))
for _name, _chunk in (("oracle", CHUNK), ("oracle8", TOKEN_CHUNK), ("oracle1", 1)):
    register_policy(_name)(_factory(_name, "oracle", _chunk))
