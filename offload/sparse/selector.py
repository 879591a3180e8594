"""`Selector`: which body units (chunks, or single tokens) each KV head of a layer attends to at a
decode step. Mechanism around a policy (`policies/`) and a budget plan (`budget_plan.py`):

- k = the layer's budget in units at this step (tokens // C for chunk selections: a budget is
  never exceeded); a budget covering every unit selects None (the store attends densely: exact).
- the policy scores the units; the top k are kept (unordered), or, when rows have budgets of their
  own (adaptive splits of token selections), each row its best first and -1 past its own budget
  (`padded`).
- whole layers (the plan's, while their chunks fit the layer's GPU slots) select every unit.
- kept selections (SparseConfig.select_every): a layer's selection is returned again, the same
  tensor, for that many steps, and made afresh at once when a chunk leaves the window, the budget
  moves or the layer is truncated.
- the rest (SparseConfig.rest, `rest.py`): low-precision copies of every body token, kept beside
  the policy's summaries, for the step to attend to what it did not select.
- prefill statistics (`observe`): the prompt's last queries' attention per key, for the plan
  (curves, ceilings, attn_cos) and for policies that observe (snapkv, h2o).
`state_dict` / `load_state_dict`: the plan's statistics and the policy's state, for sessions.
"""

from __future__ import annotations

import torch

from ..kernels.dispatch import top_chunks
from .adaptive_budgets import mass_curve
from .budget_plan import BudgetPlan, Budgets
from .config import SparseConfig
from .policies.token import best_first
from .policy import Geometry
from .rest import RestCopies
from .whole_layers import oracle_recall

__all__ = ["Selector"]


class Selector:
    """Selection state of one store. geometry: the policy's view of the store; slots: GPU slots per
    layer (a whole layer is read whole only while its chunks fit them)."""

    def __init__(self, config: SparseConfig, geometry: Geometry, slots: list[int] | None = None):
        self.config, self.geometry, self.slots = config, geometry, slots
        self.tokens = config.policy.selects_tokens  # ids name body tokens, not chunks
        self.state = config.policy.start(geometry)
        self.plan = BudgetPlan.empty(config.budget, config.split, config.whole_below, geometry.n_layers)
        self._memo: tuple[int, Budgets] | None = None  # (uniform tokens, plan.at) of the current plan
        # kept selections, per layer: (ids [R, k], (n_chunks, k) they were made for, calls served)
        self._kept: list[tuple | None] = [None] * geometry.n_layers
        # made afresh / served again / of those made afresh, ranked among a two-level policy's candidates
        self.counters = {"selections": 0, "selections_kept": 0, "selections_two_level": 0}
        self.padded = [False] * geometry.n_layers  # the layer's selection has -1 past some rows' budgets
        self.whole = [False] * geometry.n_layers  # the layer's selection is its whole body
        g = geometry
        self.rest = None if config.rest is None else RestCopies(config.rest, g.n_layers, g.batch * g.n_kv,
                                                                 g.head_dim, g.kv_dtype, g.device)  # fmt: skip

    @property
    def wants_mass(self) -> bool:
        """The policy takes each step's attention mass per selected unit (`attended`)."""
        return self.state.wants_mass

    # -- building ----------------------------------------------------------------------------------
    def before_chunks(self, layer: int, keys: torch.Tensor) -> None:
        """The layer is about to emit its first chunks; keys [R, N, D]: what it holds so far."""
        self.state.before_chunks(layer, keys)

    def add_chunks(self, layer: int, j: int, keys: torch.Tensor, values: torch.Tensor | None = None) -> None:
        """Chunks j .. j+n-1 of `layer` joined the body; keys, values [R, n*C, D] on the device (values
        feed the rest; a selector with a rest needs them). The store numbers the chunks (the one
        writer of the count); whole chunks of its rows only."""
        g = self.geometry
        rows = g.batch * g.n_kv
        if keys.dim() != 3 or keys.shape[0] != rows or keys.shape[1] % g.chunk or keys.shape[2] != g.head_dim:
            raise ValueError(f"layer {layer}: summaries take keys [{rows}, n*{g.chunk}, {g.head_dim}] "
                             f"(whole chunks), got {list(keys.shape)}")
        self.state.add(layer, j, keys)
        if self.rest is not None:
            if values is None or values.shape != keys.shape:
                raise ValueError(f"layer {layer}: the rest takes values shaped as the keys {list(keys.shape)}")
            self.rest.add(layer, j * g.chunk, keys, values)

    def observe(self, layer: int, q_tail: torch.Tensor | None, keys: torch.Tensor | None, scaling: float,
                attn_cos: float | None, n_chunks: int) -> None:  # fmt: skip
        """Prefill statistics of `layer`: q_tail [B, H, t, D] the prompt's last queries, keys
        [B, Hkv, n, D] every key of the layer (post-RoPE), attn_cos the mean cos(h, h + attn(h)),
        n_chunks the layer's body chunks."""
        cfg, g = self.config, self.geometry
        if attn_cos is not None:
            self._set_plan(self.plan.observed(layer, attn_cos=float(attn_cos)))
        adaptive = cfg.split == "adaptive"
        if q_tail is None or not (cfg.policy.observes or adaptive or cfg.whole_below > 0):
            return
        m = n_chunks
        b, h, t, d = q_tail.shape
        n = keys.shape[2]
        qg = q_tail.float().reshape(b, g.n_kv, h // g.n_kv, t, d)
        s = torch.einsum("bkgtd,bknd->bkgtn", qg, keys.float()) * scaling
        qpos = torch.arange(n - t, n, device=s.device)[:, None]
        s = s.masked_fill(torch.arange(n, device=s.device)[None, :] > qpos, float("-inf"))
        mass = torch.softmax(s, dim=-1).sum(dim=(2, 3))  # [B, Hkv, n]
        if adaptive:  # token selections split per row (KV head), chunk selections per layer
            curve = mass_curve(mass, g.sinks, m * g.chunk, per_row=self.tokens)
            self._set_plan(self.plan.observed(layer, curves=curve))
        if cfg.whole_below > 0:  # the ceiling of this selector's unit: single tokens or chunks
            unit = 1 if self.tokens else g.chunk
            # adaptive: at the uniform budget (which layers are whole decides the split, not back)
            k = (self.plan.uniform(n) if adaptive else self.token_budget(layer, n)) // unit
            ceiling = oracle_recall(mass, g.sinks, unit, m * g.chunk // unit, k)
            self._set_plan(self.plan.observed(layer, ceilings=ceiling))
        if cfg.policy.observes:
            self.state.observe(layer, mass, m)

    def _set_plan(self, plan: BudgetPlan) -> None:
        self.plan, self._memo = plan, None

    # -- budgets -----------------------------------------------------------------------------------
    def budgets(self, n_tokens: int) -> Budgets:
        """The plan at a step over n_tokens tokens (memoised per uniform budget)."""
        tokens = self.plan.uniform(n_tokens)
        if self._memo is None or self._memo[0] != tokens:
            self._memo = (tokens, self.plan.at(n_tokens))
        return self._memo[1]

    def token_budget(self, layer: int, n_tokens: int) -> int:
        """Body tokens `layer` may attend to at a step over n_tokens (its widest row's)."""
        return max(self.budgets(n_tokens).rows[layer])

    def chunk_budget(self, layer: int, n_tokens: int) -> int:
        return self.token_budget(layer, n_tokens) // self.geometry.chunk

    def row_budgets(self, layer: int, n_tokens: int) -> list[int] | None:
        """Body tokens of each row of `layer` when they differ; None = every row has token_budget."""
        rows = self.budgets(n_tokens).rows[layer]
        return list(rows) if len(rows) > 1 and min(rows) != max(rows) else None

    def is_whole(self, layer: int, n_chunks: int, n_tokens: int) -> bool:
        """`layer` is attended whole at this step: whole in the plan and its chunks fit its slots."""
        if layer not in self.budgets(n_tokens).whole:
            return False
        return self.slots is None or n_chunks <= self.slots[layer]

    # -- selecting ---------------------------------------------------------------------------------
    def select(self, layer: int, q: torch.Tensor, n_chunks: int, n_tokens: int,
               scaling: float | None = None) -> torch.Tensor | None:  # fmt: skip
        """Unit ids per row [B*Hkv, k] for q [B, H, D] (one decode query) — chunk ids, or body token
        ids — or None = the budget covers every unit (attend densely). scaling: the attention's
        logit scale (default D^-0.5)."""
        k, units = self._size(layer, n_chunks, n_tokens)
        if k >= units:
            return None
        whole = self.is_whole(layer, n_chunks, n_tokens)
        kept = self._kept[layer]
        # a whole layer's selection (every unit) depends on nothing else: kept whatever select_every
        if kept is not None and kept[1] == (n_chunks, k) and (kept[2] < self.config.select_every or whole):
            self._kept[layer] = (kept[0], kept[1], kept[2] + 1)
            self.counters["selections_kept"] += 1
            return kept[0]
        self.counters["selections"] += 1
        rows_k = self.row_budgets(layer, n_tokens) if self.tokens else None
        scale = q.shape[-1] ** -0.5 if scaling is None else scaling
        chosen = self._choose(layer, q, n_chunks, units, k, scale, rows_k, whole)
        self._kept[layer] = (chosen, (n_chunks, k), 1)
        self.padded[layer] = rows_k is not None and not whole
        self.whole[layer] = whole
        return chosen

    def predict(self, layer: int, q: torch.Tensor, n_chunks: int, n_tokens: int,
                scaling: float | None = None) -> torch.Tensor | None:  # fmt: skip
        """What `select` would pick for q [B, H, D] made afresh, with nothing recorded (kept
        selections, counters, the policy's state): a lookahead's guess from a query to come
        (`offload.next_query`). None where `select` would attend densely or read the layer whole."""
        k, units = self._size(layer, n_chunks, n_tokens)
        if k >= units or self.is_whole(layer, n_chunks, n_tokens):
            return None
        rows_k = self.row_budgets(layer, n_tokens) if self.tokens else None
        scale = q.shape[-1] ** -0.5 if scaling is None else scaling
        return self._choose(layer, q, n_chunks, units, k, scale, rows_k, False, record=False)

    def _size(self, layer: int, n_chunks: int, n_tokens: int) -> tuple[int, int]:
        """(units the layer's budget allows, units its body has): tokens, or chunks."""
        if self.tokens:
            return self.token_budget(layer, n_tokens), n_chunks * self.geometry.chunk
        return self.chunk_budget(layer, n_tokens), n_chunks

    def _choose(self, layer, q, n_chunks, units, k, scaling, rows_k, whole, record=True) -> torch.Tensor:
        g = self.geometry
        rows = g.batch * g.n_kv
        if whole:  # every unit (chunk, or token) of the body
            return torch.arange(units, device=g.device).expand(rows, units)
        if k == 0:
            return torch.full((rows, 0), -1, dtype=torch.long, device=g.device)
        rk = None if rows_k is None else torch.tensor(rows_k, device=g.device).view(g.batch, g.n_kv, 1)
        among = self.state.candidates(layer, q, n_chunks, k, scaling)  # two levels: [B, Hkv, T] ids
        if among is None:
            scores = self.state.scores(layer, q, n_chunks, k, scaling, rk)  # [B, Hkv, units]
        else:
            scores = self.state.scores(layer, q, n_chunks, k, scaling, rk, among=among)  # [B, Hkv, T]
            self.counters["selections_two_level"] += record
        if rk is not None:  # each row its own k: its best first (sorted), -1 past its budget
            idx = best_first(scores, k)
            idx = idx if among is None else among.gather(-1, idx)
            return idx.masked_fill(torch.arange(k, device=g.device) >= rk, -1).reshape(rows, k)
        idx = top_chunks(scores, k).long()  # [B, Hkv, k]
        idx = idx if among is None else among.gather(-1, idx)
        if record:
            self.state.chose(layer, idx, n_chunks)
        return idx.reshape(rows, k)

    def attended(self, layer: int, ids: torch.Tensor, mass: torch.Tensor) -> None:
        """Row r of `layer` gave mass[r, i] to unit ids[r, i] at this step (both [R, n])."""
        self.state.attended(layer, ids, mass)

    def truncate(self, layer: int, m: int) -> None:
        self._kept[layer] = None
        self.state.truncate(layer, m)
        if self.rest is not None:
            self.rest.truncate(layer, m * self.geometry.chunk)

    # -- sessions ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able plan statistics, tensors: the plan's curves and the policy's state)."""
        meta, tensors = self.plan.state()
        policy = {f"policy.{k}": v for k, v in self.state.state_dict().items()}
        return meta, {**{f"plan.{k}": v for k, v in tensors.items()}, **policy}

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        plan = {k[5:]: v for k, v in tensors.items() if k.startswith("plan.")}
        self._set_plan(self.plan.restored(meta, plan))
        self.state.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("policy.")})
        self._kept = [None] * self.geometry.n_layers

    @property
    def nbytes(self) -> int:
        """Device bytes of the policy's summaries and scores, and of the rest."""
        return self.state.nbytes + (0 if self.rest is None else self.rest.nbytes)
