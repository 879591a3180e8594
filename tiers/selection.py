"""`Selector`: which body chunks each KV head attends to at a decode step (sparse decode's policy).

Per layer and KV head: sinks + the recent window always (the store's edges); then the top-k body
chunks by the policy's score, k = the layer's budget in tokens // C (floored: a budget is never
exceeded). A budget that covers every body chunk selects nothing away: the store attends densely,
so output equals dense (invariant 1). Policies:

- `bound` (ours): low-rank upper bound of the chunk's best q.k (`ChunkAbstracts` "lowrank").
- `token` (ours): per-token sketches (`ChunkAbstracts` "token"), ranked by `token_ranking.py`
  (a share by the per-token bound, the rest by estimated mass). By default (config.select_unit) it
  picks single tokens — k = the budget in tokens, ids [R, k] of body tokens, read out of the chunks
  that hold them: a chunk mixes the token that matters with seven that do not (4k, 1/16: recall
  0.93 vs 0.86). With `adaptive` layer budgets (the default) a token selection's budget is split
  per row (KV head): ids [R, k] for the largest row budget k, each row its best first and -1 past
  its own budget (`padded`).
- `quest`: per-channel min/max bound (Quest). `landmark`: mean key (ShadowKV), not a bound.
- `snapkv`: static — attention mass of the prompt's last `OBS_WINDOW` queries per chunk, summed over
  the query group, measured at prefill; chunks decoded later are always kept (SnapKV keeps every
  generated token).
- `h2o`: accumulated attention mass, evicting (H2O): the prompt's mass as for snapkv, then each
  step adds the mass the chunk received; a chunk not selected is evicted for good. A chunk that
  leaves the window starts at the mean score of the head's live chunks (its window-time mass is not
  tracked: an approximation).

Whole layers (`whole_layers.py`, config.whole_below): a layer whose best possible chunk selection
keeps too little of the prompt's attention (measured at prefill) selects all its chunks while they
fit its GPU slots. SmolLM2 at 4k: layer 0 (ceiling 0.44 at 1/16; others >= 0.70).

Kept selections (config.select_every, default 1 = none): a layer's selection is returned again, the
same tensor, for that many steps, and made afresh at once when a chunk leaves the window, the budget
moves or the layer is truncated. Cheaper on a CPU, but misses the needle a later query turns to.

GQA: scores are the max (bounds) or sum (masses) over the KV head's query group. Layer budgets:
`squeeze.layer_budgets` (uniform, or SqueezeAttention from prefill's cos(h, h + attn(h))), or
`adaptive_split` (the most of the prompt's last queries' attention; too wide a layer is read whole).
snapkv/h2o/squeeze/adaptive need prefill statistics: a store reopened from a session (no prefill)
falls back to uniform budgets, and snapkv/h2o to recency (the latest chunks).
"""

from __future__ import annotations

import math

import torch

from offload.kernels.dispatch import top_chunks

from .abstracts import ChunkAbstracts
from .adaptive_budgets import adaptive_split, mass_curve
from .squeeze import layer_budgets
from .token_ranking import best_first, hybrid_scores, token_ranking
from .whole_layers import oracle_recall, whole_layers

__all__ = ["Selector", "OBS_WINDOW", "ABSTRACT_KIND", "hybrid_scores", "token_ranking"]

OBS_WINDOW = 32  # prompt queries whose attention snapkv/h2o observe at prefill
ABSTRACT_KIND = {"bound": "lowrank", "token": "token", "quest": "quest", "landmark": "mean"}
_KEEP = 1e30  # snapkv score of a decoded chunk: always kept before any prompt chunk


class Selector:
    """Selection state of one `TieredKVStore` (layout: its ChunkLayout; config: OffloadConfig)."""

    def __init__(self, layout, n_kv_heads: int, batch: int, config, device, slots: list[int] | None = None,
                 kv_dtype: torch.dtype = torch.bfloat16):  # fmt: skip
        self.layout, self.n_kv, self.batch = layout, n_kv_heads, batch
        # whole layers (whole_layers.py): prefill's ceiling recall per layer, the GPU slots per layer
        self.whole_below, self.slots = config.whole_below, slots
        self.ceiling: list[float | None] = [None] * layout.n_layers
        self._whole: frozenset[int] | None = frozenset()
        self.policy, self.budget = config.policy, config.budget
        self.bound_share = config.bound_share
        self.tokens = config.selects_tokens  # ids name body tokens, not chunks (select_unit)
        self.layer_policy = config.layer_budget
        self.device = torch.device(device)
        n_layers = layout.n_layers
        cap = layout.body_chunks(config.ctx) + 1 if config.ctx else 64
        kind = ABSTRACT_KIND.get(self.policy)
        self.abstracts = None
        if kind is not None:
            self.abstracts = ChunkAbstracts(n_layers, batch, n_kv_heads, layout.head_dim, kind,
                                            config.rank, device, capacity=cap, chunk=layout.chunk,
                                            kv_dtype=kv_dtype)  # fmt: skip
        # snapkv / h2o: a score per chunk [B, Hkv, cap] per layer; h2o also marks evicted chunks
        self._score: list[torch.Tensor | None] = [None] * n_layers
        self._alive: list[torch.Tensor | None] = [None] * n_layers
        self._m = [0] * n_layers
        self._observed = [False] * n_layers  # snapkv/h2o: prefill statistics arrived for the layer
        self.attn_cos: list[float | None] = [None] * n_layers
        self.curves: list[torch.Tensor | None] = [None] * n_layers  # adaptive: prefill's recall curves
        self._budgets_cache: tuple | None = None
        # kept selections, per layer: (ids [R, k], (n_chunks, k) they were made for, calls served)
        self.every = config.select_every
        self._kept: list[tuple | None] = [None] * n_layers
        self.counters = {"selections": 0, "selections_kept": 0}  # made afresh / served again
        self.padded = [False] * n_layers  # the layer's selection has -1 past some rows' budgets

    # -- building ----------------------------------------------------------------------------------
    def before_chunks(self, layer: int, keys: torch.Tensor) -> None:
        """The layer is about to emit its first chunks; keys [R, N, D]: what it holds so far."""
        if self.abstracts is not None:
            self.abstracts.ensure_basis(layer, keys)

    def add_chunks(self, layer: int, j: int, keys: torch.Tensor) -> None:
        """Chunks j .. j+n-1 of `layer` joined the body; keys [R, n*C, D] on the device."""
        n = keys.shape[1] // self.layout.chunk
        if self.abstracts is not None:
            self.abstracts.add(layer, j, keys)
        if self.policy in ("snapkv", "h2o"):
            score, alive = self._state(layer, j + n)
            for i in range(j, j + n):
                if self.policy == "snapkv":
                    score[:, :, i] = _KEEP
                else:
                    live = alive[:, :, :i]
                    n_live = live.sum(-1).clamp(min=1)
                    score[:, :, i] = (score[:, :, :i] * live).sum(-1) / n_live
                    alive[:, :, i] = True
        self._m[layer] = j + n

    def _state(self, layer: int, need: int):
        s = self._score[layer]
        if s is None or s.shape[-1] < need:
            cap = max(need, 64, 2 * (0 if s is None else s.shape[-1]))
            new_s = torch.zeros(self.batch, self.n_kv, cap, device=self.device)
            new_a = torch.zeros(self.batch, self.n_kv, cap, dtype=torch.bool, device=self.device)
            if s is not None:
                new_s[:, :, : s.shape[-1]] = s
                new_a[:, :, : s.shape[-1]] = self._alive[layer]
            self._score[layer], self._alive[layer] = new_s, new_a
        return self._score[layer], self._alive[layer]

    def observe_prefill(self, layer: int, q_tail: torch.Tensor | None, keys: torch.Tensor | None,
                        scaling: float, attn_cos: float | None) -> None:  # fmt: skip
        """Prefill statistics of `layer`: q_tail [B, H, t, D] the prompt's last queries, keys
        [B, Hkv, n, D] every key of the layer (post-RoPE), attn_cos the mean cos(h, h + attn(h))."""
        if attn_cos is not None:
            self.attn_cos[layer] = float(attn_cos)
            self._budgets_cache = None
        stateful = self.policy in ("snapkv", "h2o")
        adaptive = self.layer_policy == "adaptive"
        if q_tail is None or not (stateful or adaptive or self.whole_below > 0):
            return
        lay, m = self.layout, self._m[layer]
        b, h, t, d = q_tail.shape
        n = keys.shape[2]
        qg = q_tail.float().reshape(b, self.n_kv, h // self.n_kv, t, d)
        s = torch.einsum("bkgtd,bknd->bkgtn", qg, keys.float()) * scaling
        qpos = torch.arange(n - t, n, device=s.device)[:, None]
        s = s.masked_fill(torch.arange(n, device=s.device)[None, :] > qpos, float("-inf"))
        mass = torch.softmax(s, dim=-1).sum(dim=(2, 3))  # [B, Hkv, n]
        if adaptive:  # token selections split per row (KV head), chunk selections per layer
            self.curves[layer] = mass_curve(mass, lay.sinks, m * lay.chunk, per_row=self.tokens)
        if self.whole_below > 0:  # the ceiling of this selector's unit: single tokens or chunks
            unit = 1 if self.tokens else lay.chunk
            # adaptive: at the uniform budget (which layers are whole decides the split, not back)
            k = (self._uniform(n) if adaptive else self.token_budget(layer, n)) // unit
            self.ceiling[layer] = oracle_recall(mass, lay.sinks, unit, m * lay.chunk // unit, k)
            self._whole = None  # recomputed at the next select
        self._budgets_cache = None
        if not stateful:
            return
        body = mass[:, :, lay.sinks : lay.sinks + m * lay.chunk].reshape(b, self.n_kv, m, lay.chunk)
        score, alive = self._state(layer, m)
        score[:, :, :m] = body.sum(-1)
        alive[:, :, :m] = True
        self._observed[layer] = True

    def is_whole(self, layer: int, n_chunks: int) -> bool:
        """`layer` is attended whole at this step: chosen at prefill and its chunks fit its slots."""
        if self._whole is None:  # adaptive budgets: `_split` (called first by select) adds wide layers
            self._whole = whole_layers(self.ceiling, self.whole_below)
        if layer not in self._whole:
            return False
        return self.slots is None or n_chunks <= self.slots[layer]

    # -- selecting ---------------------------------------------------------------------------------
    def chunk_budget(self, layer: int, n_tokens: int) -> int:
        """Body chunks `layer` may attend to at a step over n_tokens tokens."""
        return self.token_budget(layer, n_tokens) // self.layout.chunk

    def token_budget(self, layer: int, n_tokens: int) -> int:
        """Body tokens `layer` may attend to at a step over n_tokens tokens (its layer budget; with
        budgets per row, the largest row's: the width of its selection)."""
        return max(self._split(n_tokens)[layer])

    def row_budgets(self, layer: int, n_tokens: int) -> list[int] | None:
        """Body tokens each row (B*Hkv) of `layer` may attend to, when they differ (adaptive splits of
        token selections); None = every row has `token_budget`."""
        rows = self._split(n_tokens)[layer]
        return rows if len(rows) > 1 and min(rows) != max(rows) else None

    def _split(self, n_tokens: int) -> list[list[int]]:
        """Per layer, its budget in tokens — one per row when the adaptive split is per row."""
        tokens = self._uniform(n_tokens)
        if self._budgets_cache is not None and self._budgets_cache[0] == tokens:
            return self._budgets_cache[1]
        n_layers = self.layout.n_layers
        if self.layer_policy == "adaptive":  # until every layer's curve is in (prefill): uniform
            split = [[tokens] for _ in range(n_layers)]
            if all(c is not None for c in self.curves):  # whole: also the layers too wide to select
                whole = whole_layers(self.ceiling, self.whole_below)
                split, self._whole = adaptive_split(tokens, self.curves, whole, self.whole_below > 0)
        else:
            stats = self.attn_cos if all(c is not None for c in self.attn_cos) else None
            split = [[b] for b in layer_budgets(tokens, n_layers, self.layer_policy, stats)]
        self._budgets_cache = (tokens, split)
        return split

    def _uniform(self, n_tokens: int) -> int:
        """The budget in tokens of every layer at a step over n_tokens tokens, before the layer split."""
        b = self.budget
        return b if isinstance(b, int) else max(1, math.ceil(b * n_tokens))

    def select(self, layer: int, q: torch.Tensor, n_chunks: int, n_tokens: int,
               scaling: float | None = None) -> torch.Tensor | None:  # fmt: skip
        """Chunk ids per row [B*Hkv, k] for q [B, H, D] (one decode query) — body token ids when
        `tokens` — or None = the budget covers every chunk (attend densely). A whole layer selects
        all. A selection is kept — the same tensor returned — for `select_every` calls (a whole
        layer's for as long) while the layer's chunk count and budget stay put (a chunk leaving the
        window is considered at once).
        scaling: the attention's logit scale (default D^-0.5), for `token`'s mass estimate."""
        if self.tokens:
            k, units = self.token_budget(layer, n_tokens), n_chunks * self.layout.chunk
        else:
            k, units = self.chunk_budget(layer, n_tokens), n_chunks
        if k >= units:
            return None
        kept = self._kept[layer]
        # a whole layer's selection (every chunk) depends on nothing else: kept whatever select_every
        same = kept is not None and kept[1] == (n_chunks, k)
        if same and (kept[2] < self.every or self.is_whole(layer, n_chunks)):
            self._kept[layer] = (kept[0], kept[1], kept[2] + 1)
            self.counters["selections_kept"] += 1
            return kept[0]
        self.counters["selections"] += 1
        rows_k = self.row_budgets(layer, n_tokens) if self.tokens else None
        chosen = self._choose(layer, q, n_chunks, units, k, scaling, rows_k)
        self._kept[layer] = (chosen, (n_chunks, k), 1)
        self.padded[layer] = rows_k is not None and not self.is_whole(layer, n_chunks)
        return chosen

    def _choose(self, layer, q, n_chunks, units, k, scaling, rows_k=None) -> torch.Tensor:
        rows = self.batch * self.n_kv
        if self.is_whole(layer, n_chunks):  # every unit (chunk, or token) of the body
            return torch.arange(units, device=self.device).expand(rows, units)
        if k == 0:
            return torch.full((rows, 0), -1, dtype=torch.long, device=self.device)
        rk = None if rows_k is None else torch.tensor(rows_k, device=self.device)  # each row's budget
        rk = None if rk is None else rk.view(self.batch, self.n_kv, 1)
        if self.policy == "token":
            scale = q.shape[-1] ** -0.5 if scaling is None else scaling
            scores = token_ranking(self.abstracts, layer, q, k, self.bound_share, scale, self.tokens, rk)
        else:
            scores = self.scores(layer, q, n_chunks)  # [B, Hkv, m]
        if rk is not None:  # each row its own k: its best first (sorted), -1 past its budget
            idx = best_first(scores, k).masked_fill(torch.arange(k, device=self.device) >= rk, -1)
            return idx.reshape(rows, k)
        idx = top_chunks(scores, k).long()  # [B, Hkv, k]
        if self.policy == "h2o" and self._observed[layer]:
            alive = self._alive[layer][:, :, :n_chunks]
            alive.zero_()  # evicting: what is not kept now never comes back
            alive.scatter_(2, idx, True)
        return idx.reshape(rows, k)

    def scores(self, layer: int, q: torch.Tensor, n_chunks: int) -> torch.Tensor:
        """The policy's score of each body chunk: [B, Hkv, n_chunks] fp32."""
        if self.abstracts is not None:
            return self.abstracts.scores(layer, q)
        if not self._observed[layer]:  # no prefill statistics (session reopened): recency
            pos = torch.arange(n_chunks, dtype=torch.float32, device=self.device)
            return pos.expand(self.batch, self.n_kv, n_chunks)
        s = self._score[layer][:, :, :n_chunks]
        if self.policy == "h2o":
            s = s.masked_fill(~self._alive[layer][:, :, :n_chunks], float("-inf"))
        return s

    @property
    def wants_mass(self) -> bool:
        """h2o: the store reports each step's attention mass per selected chunk (`add_mass`)."""
        return self.policy == "h2o"

    def add_mass(self, layer: int, ids: torch.Tensor, mass: torch.Tensor) -> None:
        """h2o: row r of `layer` gave mass[r, i] to chunk ids[r, i] at this step (both [R, n])."""
        if not self._observed[layer] or ids.numel() == 0:
            return
        s = self._score[layer].view(self.batch * self.n_kv, -1)
        s.scatter_add_(1, ids.to(s.device), mass.to(s.device, s.dtype))

    def truncate(self, layer: int, m: int) -> None:
        self._kept[layer] = None
        if self.abstracts is not None:
            self.abstracts.truncate(layer, m)
        self._m[layer] = min(self._m[layer], m)

    @property
    def nbytes(self) -> int:
        """Device bytes of abstracts and scores."""
        total = self.abstracts.nbytes if self.abstracts is not None else 0
        return total + sum(s.numel() * 5 for s in self._score if s is not None)
