"""The runtime's selection policies (`offload.sparse`) behind the attention-recall interface
(policies.py): `StorePolicy` drives a policy's state through the same hooks the store's `Selector`
calls, on the keys laid out as the store lays them out — `sinks` tokens, body chunks of C tokens,
then the window (the last `window` tokens plus the tail that does not fill a chunk). The harness
keeps only the last `window` tokens for free, so the partial tail is paid from the budget first;
the rest buys top-scoring units (k = rest // C). A summary is rebuilt from the body's keys at each
step, on a basis fixed at the layer's first step (the prompt's keys), as at prefill.

Differences to the store, forced by the interface (one query, all keys): `snapkv` and `h2o`
observe the first decode step's query instead of the prompt's last 32 queries; `h2o` then
accumulates the mass each step's selection receives, evicting what it drops.

Measurement-only names: `oracle` (the units with the most exact attention mass at this step: the
ceiling of any selection of those units; `oracle` 16-token chunks, `oracle8`, `oracle1` single
tokens) and `token8` (`token` picking 8-token chunks). Each runtime policy runs at the unit the
store gives it by default: `token` single tokens (a "chunk" of 1), the others their chunk.
"""

from __future__ import annotations

import torch

from ..sparse import make_policy, policy_classes
from ..sparse.policies.token import Token
from ..sparse.policy import Geometry
from ..tiers.layout import ChunkLayout

__all__ = ["StorePolicy", "store_policy", "EXTRA", "ORACLE"]

ORACLE = "oracle"
EXTRA = {"token8": (Token(unit="chunk"), 8), "oracle": (None, 16), "oracle8": (None, 8), "oracle1": (None, 1)}


class StorePolicy:
    """One runtime policy (None: the oracle) selecting units of `chunk` tokens (see module doc)."""

    respects_budget = True

    def __init__(self, name: str, policy, chunk: int, sinks: int = 4, window: int = 64):
        self.name, self.policy, self.chunk = name, policy, chunk
        self.sinks, self.window = sinks, window
        self._basis: dict[int, dict] = {}  # layer -> the summary's basis state, fixed at its first step
        self._state: dict[int, object] = {}  # layer -> snapkv / h2o state, kept across steps
        self._m: dict[int, int] = {}  # layer -> body chunks that state holds
        self._last_t: dict[int, int] = {}

    def select(self, layer, query, keys, budget):
        """budget: tokens, or a list of tokens per KV head (the store's adaptive split of token
        selections): each head its best k_h, as the store ranks them."""
        n_kv, t, d = keys.shape
        rows = None
        if isinstance(budget, (list, tuple)):
            rows = budget if len(set(budget)) > 1 else None
            budget = max(budget)
        if t < self._last_t.get(layer, 0):  # a new sequence: forget per-layer state
            for state in (self._basis, self._state, self._m):
                state.pop(layer, None)
        self._last_t[layer] = t
        m = ChunkLayout(1, n_kv, self.chunk, d, torch.float32, self.sinks, self.window).body_chunks(t)
        wstart = self.sinks + m * self.chunk
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
        state = self._scorer(layer, query, keys, body)
        # a two-level policy ranks only its candidates (ids [Hkv, T]), as the store's Selector
        among = None if state is None or not k else state.candidates(0, query[None], m, k, d**-0.5)
        if state is None:
            scores = self._oracle(query, keys, m)
        elif among is None:
            scores = state.scores(0, query[None], m, k, d**-0.5, rows_k)[0]
        else:
            scores = state.scores(0, query[None], m, k, d**-0.5, rows_k, among=among)[0]
        if k:
            idx = scores.topk(k, dim=-1).indices  # [Hkv, k], best first
            idx = idx if among is None else among[0].gather(-1, idx)
            tok = self.sinks + idx[..., None] * self.chunk + torch.arange(self.chunk, device=keys.device)
            if rows_k is not None:  # past a head's own k: token 0 (a sink, kept anyway)
                tok = tok.masked_fill((torch.arange(k) >= rows_k[0])[..., None], 0)
            mask.scatter_(1, tok.reshape(n_kv, -1), True)
        if state is not None and state.wants_mass:
            self._attended(state, query, keys, mask, m, idx if k else None)
        return mask

    def _geometry(self, keys, m):
        n_kv, _, d = keys.shape
        return Geometry(1, 1, n_kv, d, self.chunk, keys.device, self.sinks, max(1, m))

    def _scorer(self, layer, query, keys, body):
        """The policy's state for this step: a summary rebuilt over the body, or the kept
        snapkv/h2o scores (observing this first query's attention); None for the oracle."""
        if self.policy is None:
            return None
        n_kv, m, c, d = body.shape
        if self.policy.observes:
            state = self._state.get(layer)
            if state is None:
                state = self._state[layer] = self.policy.start(self._geometry(keys, m))
                state.observe(0, _mass(query, keys)[None], m)
                self._m[layer] = m
            have = self._m[layer]
            if have < m:  # chunks that left the window since
                state.add(0, have, body[:, have:].reshape(n_kv, (m - have) * c, d))
                self._m[layer] = m
            return state
        state = self.policy.start(self._geometry(keys, m))
        if layer in self._basis:
            state.load_state_dict(self._basis[layer])
        else:
            state.before_chunks(0, keys)
            self._basis[layer] = state.state_dict()
        state.add(0, 0, body.reshape(n_kv, m * c, d))  # every chunk in one pass, as prefill
        return state

    def _oracle(self, query, keys, m):
        """The units' true attention mass: the best any choice of them can do."""
        n_kv = keys.shape[0]
        return _mass(query, keys)[:, self.sinks : self.sinks + m * self.chunk].reshape(n_kv, m, self.chunk).sum(-1)

    def _attended(self, state, query, keys, mask, m, idx):
        """h2o: evict what was not selected, add the mass the selection received."""
        if idx is None:
            state.chose(0, torch.zeros(1, keys.shape[0], 0, dtype=torch.long), m)
            return
        state.chose(0, idx[None], m)
        keep = mask.clone()
        keep[:, : self.sinks] = True
        keep[:, max(0, keys.shape[1] - self.window) :] = True
        mass = _mass(query, keys, keep)[:, self.sinks : self.sinks + m * self.chunk]
        per_chunk = mass.reshape(keys.shape[0], m, self.chunk).sum(-1)
        state.attended(0, idx, per_chunk.gather(1, idx))


def _mass(query, keys, keep=None):
    """Attention probabilities of query [H, D] over keys [Hkv, T, D] (keep: bool [Hkv, T]), summed
    over each KV head's group: [Hkv, T]."""
    n_kv, t, d = keys.shape
    g = query.shape[0] // n_kv
    s = torch.einsum("kgd,ktd->kgt", query.float().reshape(n_kv, g, d), keys.float()) * d**-0.5
    if keep is not None:
        s = s.masked_fill(~keep[:, None, :], float("-inf"))
    return torch.softmax(s, dim=-1).sum(1)


def store_policy(name: str, sinks: int = 4, window: int = 64) -> StorePolicy | None:
    """The recall harness's policy `name` (a runtime policy, or a measurement-only one), or None."""
    if name in EXTRA:
        policy, chunk = EXTRA[name]
        return StorePolicy(name, policy, chunk, sinks, window)
    if name in policy_classes():
        policy = make_policy(name)
        return StorePolicy(name, policy, 1 if policy.selects_tokens else policy.chunk, sinks, window)
    return None
