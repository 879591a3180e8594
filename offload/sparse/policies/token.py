"""`token` (ours, the default): per-token low-rank sketches of the keys, ranked by an upper bound of
q.k and by the attention mass they estimate.

Summary: the layer's `KeyBasis` P [D, r], and per token P^T k in int8 with one scale per token
(absmax / 127, rounded up) and the norm of the residual k - P P^T k (rounded up). With the rounding
error of each coordinate at most half a scale step,

    bound = q~ . k^ + ||q_res|| res + ||q~||_1 (scale / 2)  >=  q.k

(invariant 5). A box per chunk mixes the extremes of different keys; a per-token bound does not, so
a chunk whose one key matters (a copy head's target) ranks where it should. r + 4 bytes per token
beside bf16 KV (r + 8 beside fp32: scale and residual in fp32); r defaults to the most that fits in
1/8 of bf16 K+V, head_dim / 2 - 4. The same sketches estimate each unit's attention mass (softmax
of scaling * q~ . k^): the bound finds a lone key that matters, the mass finds attention spread
over many keys. A step's ranking: ceil(share * k) units by the bound, the rest by the mass.
`unit` "token" picks single tokens (ids of body tokens), "chunk" whole chunks.
Two levels (`candidates` > 0, token units): `BlockBounds` bounds every sketch bound of a block of
`block` tokens; a step scores the blocks, keeps ceil(candidates * k / block) of them and ranks single
tokens only there (the tokens past the last complete block always), so its cost grows with
context / block + candidates * k, not with the context. Their token sketches may then live in host
memory (`sketches="host"`, pinned beside a GPU): a step reads only the candidates' from there, and
only the block bounds stay resident (what lets a million tokens' summaries leave a 24 GB GPU).
Measurements of every choice here: bench/results/sparse-smollm2.md (sessions 7-9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import ConfigError
from ...kernels.dispatch import sketch_scores, top_chunks
from ..basis import KeyBasis
from ..block_bounds import BlockBounds, summary_dtype
from ..policy import Geometry, PolicyState, SelectionPolicy

__all__ = ["Token", "TwoLevel", "TokenSketches", "best_first", "hybrid_scores"]

_FP16_UP = 1 + 2**-10  # x * _FP16_UP rounded to fp16 is >= x (round-to-nearest errs by <= 2^-11)
_Q8 = 127  # int8 levels each side of 0
_HALF_STEP = 0.5 + 2**-12  # |P^T k - scale * int8| / scale: half a step, plus fp32 division error
_MIN_SCALE = 2**-14  # smallest normal fp16: a zero projection still gets a usable scale


def max_rank(head_dim: int) -> int:
    """The most r whose sketch (r int8 + two halves per token) fits 1/8 of bf16 K+V (4D bytes)."""
    return max(1, head_dim // 2 - 4)


@dataclass(frozen=True)
class Token(SelectionPolicy):
    """rank: r of the sketches (None = max_rank(head_dim), also the cap); share: of k picked by the
    bound (1 = bound alone, 0 = estimated mass alone); unit: "token" or "chunk"; candidates: tokens
    scored singly per selected token (0 = every token: one level); block: tokens per first-level
    block (two levels only); fan: blocks per superblock of a third level above them (0 = none; see
    `block_bounds`); sketches: where the token sketches live, "device" or "host" (two levels only:
    a step then copies the candidates' sketches to the device)."""

    name: ClassVar[str] = "token"
    chunk: ClassVar[int] = 8  # per-token sketches: finer chunks cost no summary bytes
    summary: ClassVar[str] = "ours: int8 low-rank sketch per token; bound + estimated mass"
    rank: int | None = None
    share: float = 0.25
    unit: str = "token"
    candidates: float = 0.0
    block: int = 64
    fan: int = 0
    sketches: str = "device"

    def __post_init__(self):
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ConfigError(f"token: rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 <= self.share <= 1:
            raise ConfigError(f"token: share must be a number in [0, 1], got {self.share!r}")
        if self.unit not in ("token", "chunk"):
            raise ConfigError(f"token: unit must be 'token' or 'chunk', got {self.unit!r}")
        c = self.candidates
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (c == 0 or c >= 1):
            raise ConfigError(f"{self.name}: candidates must be 0 (one level) or a number >= 1, got {c!r}")
        if c and self.unit != "token":
            raise ConfigError(f"{self.name}: two levels (candidates > 0) select single tokens (unit 'token')")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 2:
            raise ConfigError(f"{self.name}: block must be an integer >= 2 tokens, got {self.block!r}")
        if isinstance(self.fan, bool) or not isinstance(self.fan, int) or self.fan < 0 or self.fan == 1:
            raise ConfigError(f"{self.name}: fan must be 0 (no third level) or an integer >= 2, got {self.fan!r}")
        if self.fan and not c:
            raise ConfigError(f"{self.name}: a third level (fan > 0) sits above two (candidates > 0)")
        if self.sketches not in ("device", "host"):
            raise ConfigError(f"{self.name}: sketches must be 'device' or 'host', got {self.sketches!r}")
        if self.sketches == "host" and not c:
            raise ConfigError(f"{self.name}: host-resident sketches need two levels (candidates > 0): one level "
                              "reads every sketch at every step")  # fmt: skip

    @property
    def selects_tokens(self) -> bool:
        return self.unit == "token"

    def start(self, geometry: Geometry) -> "TokenSketches":
        return TokenSketches(self, geometry)

    def summary_bytes(self, head_dim: int, chunk: int, kv_itemsize: int) -> float:
        return sum(self.placed_bytes(head_dim, chunk, kv_itemsize, "cpu"))

    def placed_bytes(self, head_dim: int, chunk: int, kv_itemsize: int, device_type: str) -> tuple[float, float]:
        r = min(self.rank or max_rank(head_dim), max_rank(head_dim))
        sketch = r + (4 if kv_itemsize <= 2 else 8)
        blocks = 0.0
        if self.candidates:
            blocks = (2 * r + 2) * summary_dtype(device_type, kv_itemsize).itemsize / self.block
            blocks *= 1 + (1 / self.fan if self.fan else 0)  # the superblocks' rows
        return (blocks, sketch) if self.sketches == "host" else (blocks + sketch, 0.0)


@dataclass(frozen=True)
class TwoLevel(Token):
    """`token` in two levels: block bounds pick candidates, token sketches rank only those."""

    name: ClassVar[str] = "token2"
    summary: ClassVar[str] = "ours: token sketches scored only in the blocks a block bound picks"
    candidates: float = 8.0
    block: int = 16
    fan: int = 16


def _on(t: torch.Tensor, device) -> torch.Tensor:
    """t on the scoring device; tokens contiguous there on a GPU (the Triton kernel's layout)."""
    t = t.to(device)
    return t.contiguous() if t.is_cuda else t


def best_first(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, Hkv, k] of the k highest scores [B, Hkv, n], highest first: an unsorted top-k,
    then a sort of those k only (a sorted top-k of 8k tokens costs ~3x more on a CPU)."""
    top = torch.topk(scores, k, dim=-1, sorted=False)
    return top.indices.gather(-1, top.values.argsort(dim=-1, descending=True))


def hybrid_scores(bound: torch.Tensor, mass: torch.Tensor, k: int, share: float,
                  rows_k: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """A ranking [B, Hkv, m] whose top k are the ceil(share * k) best by `bound`, then the best of
    the rest by `mass`. rows_k [B, Hkv, 1]: each row's own k (<= k), its own ceil(share * k_row)."""
    first = math.ceil(share * k)
    if first == 0:
        return mass
    if rows_k is None:
        return mass.scatter(-1, top_chunks(bound, first).long(), float("inf"))
    top = best_first(bound, first)  # a row's best bounds first
    mine = torch.arange(first, device=bound.device) < torch.ceil(share * rows_k)
    return mass.scatter(-1, top, torch.where(mine, float("inf"), mass.gather(-1, top)))


class TokenSketches(PolicyState):
    """lo [L, B, Hkv, r, cap*C] int8 levels; aux [L, B, Hkv, 2, cap*C] (scale, residual), tokens
    last: scoring is one [G, r] x [r, N] matmul per KV head. Two levels store them tokens first
    ([.., cap*C, r] and [.., cap*C, 2]): a candidate block's sketches are then one contiguous run, so
    gathering them does not cost a cache miss per (coordinate, block) of a context larger than the
    cache (at 1M tokens: 35 ms a layer step on a CPU, against 3.5 ms at 32k)."""

    def __init__(self, policy: Token, geometry: Geometry):
        super().__init__(policy, geometry)
        g = geometry
        self.rank = min(policy.rank or max_rank(g.head_dim), max_rank(g.head_dim))
        self.sketch_dtype = torch.float16 if g.kv_dtype.itemsize <= 2 else torch.float32
        self.basis = KeyBasis(g.n_layers, g.batch, g.n_kv, g.head_dim, self.rank, g.device)
        # where lo / aux live: the compute device, or host memory (pinned beside a GPU)
        self.home = torch.device("cpu") if policy.sketches == "host" else torch.device(g.device)
        self.token_major = policy.candidates > 0
        self.capacity = 0
        self._alloc(max(1, g.capacity))
        self.blocks = None
        if policy.candidates > 0:
            dtype = summary_dtype(torch.device(g.device).type, g.kv_dtype.itemsize)
            self.blocks = BlockBounds(g.n_layers, g.batch, g.n_kv, self.rank, policy.block, g.device, dtype,
                                      policy.fan)  # fmt: skip

    def _alloc(self, capacity: int) -> None:
        g, tokens = self.geometry, capacity * self.geometry.chunk
        lead = (g.n_layers, g.batch, g.n_kv)
        pin = self.home.type == "cpu" and torch.device(g.device).type == "cuda"
        lo_shape, aux_shape = ((tokens, self.rank), (tokens, 2)) if self.token_major else ((self.rank, tokens), (2, tokens))
        lo = torch.zeros((*lead, *lo_shape), dtype=torch.int8, device=self.home, pin_memory=pin)
        aux = torch.zeros((*lead, *aux_shape), dtype=self.sketch_dtype, device=self.home, pin_memory=pin)
        if self.capacity:
            dim, old = (-2 if self.token_major else -1), self.capacity * g.chunk  # the tokens' dim
            lo.narrow(dim, 0, old).copy_(self.lo)
            aux.narrow(dim, 0, old).copy_(self.aux)
        self.lo, self.aux, self.capacity = lo, aux, capacity

    def sketches(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the layer's first n sketches where they live: levels [B, Hkv, r, n] int8, aux
        [B, Hkv, 2, n] (scale, res), whatever the storage order."""
        if self.token_major:
            return self.lo[layer, :, :, :n].transpose(-1, -2), self.aux[layer, :, :, :n].transpose(-1, -2)
        return self.lo[layer, ..., :n], self.aux[layer, ..., :n]

    def before_chunks(self, layer: int, keys: torch.Tensor) -> None:
        self.basis.ensure(layer, keys)

    def add(self, layer: int, j: int, keys: torch.Tensor) -> None:
        g, c = self.geometry, self.geometry.chunk
        kf = g.chunked(keys)  # [B, Hkv, n, C, D]
        n = kf.shape[2]
        if j + n > self.capacity:
            self._alloc(max(j + n, 2 * self.capacity))
        if not self.basis.has[layer]:  # no before_chunks (a store fed chunks directly)
            self.basis.ensure(layer, keys)
        proj, resid = self.basis.project(layer, kf)  # [B, Hkv, n, C, r], [B, Hkv, n, C]
        # scale >= absmax / 127 once stored (rounded up): |P^T k / scale| <= 127
        up = _FP16_UP if self.sketch_dtype == torch.float16 else 1.0
        amax = proj.abs().amax(-1, keepdim=True)  # [B, Hkv, n, C, 1]
        scale = (amax * (up / _Q8)).clamp(min=_MIN_SCALE).to(self.sketch_dtype)
        levels = (proj / scale.float()).round().clamp(-_Q8, _Q8)  # error <= _HALF_STEP * scale
        cols = slice(j * c, (j + n) * c)
        b, h = g.batch, g.n_kv
        levels = levels.to(torch.int8).reshape(b, h, n * c, -1)
        aux = torch.cat([scale, (resid * up)[..., None].to(self.sketch_dtype)], -1).reshape(b, h, n * c, 2)
        if self.token_major:
            self.lo[layer, :, :, cols], self.aux[layer, :, :, cols] = levels, aux
        else:
            self.lo[layer, :, :, :, cols] = levels.transpose(-1, -2)
            self.aux[layer, :, :, :, cols] = aux.transpose(-1, -2)
        if self.blocks is not None:
            self.blocks.update(layer, *self.sketches(layer, (j + n) * c), j * c, (j + n) * c)

    def bound_and_mass(self, layer: int, q: torch.Tensor, n_chunks: int, scaling: float | None,
                       per_token: bool = False):  # fmt: skip
        """q [B, H, D]: (bound, mass), each [B, Hkv, m] fp32 (per_token: [B, Hkv, m*C]). bound: the
        per-token upper bound, max over the unit's tokens and the group; mass (None when scaling is
        None): softmax over the body of scaling * q~ . k^ per query head, summed over the unit and
        the group — an estimate, not a bound."""
        g, m, c = self.geometry, n_chunks, self.geometry.chunk
        b, n = q.shape[0], m * c
        # per token [B, Hkv, N] (the sketches' body: views of the preallocated lo / aux)
        # host-resident sketches: every one copied (a short context, where two levels are one)
        levels, aux = (_on(t, q.device) for t in self.sketches(layer, n))
        bound, mass = sketch_scores(q, self.basis.basis[layer], levels, aux, scaling, _HALF_STEP)
        # reductions over contiguous dims (the group first, in sketch_scores, then the chunk's
        # tokens): a strided amax over (G, C) at once costs several times more on CPU
        if not per_token:
            bound = bound.view(b, g.n_kv, m, c).amax(-1)
        if mass is None:
            return bound, None
        return bound, mass if per_token else mass.view(b, g.n_kv, m, c).sum(-1)

    def candidates(self, layer, q, n_chunks, k, scaling):
        """Two levels: the body token ids [B, Hkv, T] to rank at this step (`BlockBounds.candidates`);
        None = rank every unit."""
        if self.blocks is None:
            return None
        count = math.ceil(self.policy.candidates * k)
        n = n_chunks * self.geometry.chunk
        return self.blocks.candidates(layer, q, self.basis.basis[layer], n, count, _HALF_STEP)

    def scores(self, layer, q, n_chunks, k, scaling, rows_k, among=None):
        """The hybrid ranking of the layer's units (of the tokens `among` [B, Hkv, T] only, in that
        order, when given); when the bound's share covers all k, the bound alone (no mass computed)."""
        share, per_token = self.policy.share, self.policy.selects_tokens
        scaling = None if math.ceil(share * k) >= k else scaling
        if among is None:
            scored = self.bound_and_mass(layer, q, n_chunks, scaling, per_token)
        else:
            levels, side = (_on(t, q.device) for t in self._gathered(layer, among))
            scored = sketch_scores(q, self.basis.basis[layer], levels, side, scaling, _HALF_STEP)
        return scored[0] if scaling is None else hybrid_scores(*scored, k, share, rows_k)

    def _gathered(self, layer: int, among: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sketches of the tokens among [B, Hkv, T] (two levels: stored tokens first): levels
        [B, Hkv, r, T], aux [B, Hkv, 2, T], gathered where they live as whole rows (a block's tokens:
        one run) by one index_select (host-resident: the ids go to the host first, a sync)."""
        lo, aux = self.lo[layer], self.aux[layer]
        b, h, t = among.shape
        rows = among.to(self.home) + torch.arange(b * h, device=self.home).view(b, h, 1) * lo.shape[2]
        rows = rows.reshape(-1)
        return (lo.reshape(-1, self.rank).index_select(0, rows).view(b, h, t, -1).transpose(-1, -2),
                aux.reshape(-1, 2).index_select(0, rows).view(b, h, t, 2).transpose(-1, -2))  # fmt: skip

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.basis.state_dict()  # sketches and block bounds are rebuilt from the keys (`add`)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.basis.load_state_dict(state)

    @property
    def nbytes(self) -> int:
        blocks = 0 if self.blocks is None else self.blocks.nbytes
        return self.lo.numel() + self.aux.numel() * self.aux.element_size() + self.basis.nbytes + blocks
