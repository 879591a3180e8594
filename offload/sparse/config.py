"""`SparseConfig`: the knobs of sparse decode, grouped (`OffloadConfig.sparse`; None = dense).

budget: KV tokens a layer attends to per step beyond sinks + window: an int is tokens, a float in
    (0, 1) a fraction of the current context.
policy: the selection policy — a name from the registry (`offload.sparse.policy_names()`: `token`,
    ours and the default; `bound`, ours; `quest`, `landmark`, `snapkv`, `h2o`, baselines) or a
    policy object with its own parameters, e.g. `Token(share=0.5)`. A name means its defaults.
split: how the budget is split over layers (the total is unchanged): "adaptive" (default: the split
    that keeps the most of the prompt's last queries' attention, each layer at least a quarter of
    the uniform budget; per KV head for token selections), "uniform", "squeeze" (SqueezeAttention).
whole_below: a layer whose best possible selection at the budget keeps less than this share of the
    prompt's last queries' attention is read whole while it fits its GPU slots, at most
    max(1, layers // 8) of them; 0 = never.
rest: the body tokens a step does not select, attended at low precision (`Rest`, default K 4 bits
    and V 4 bits, 5/16 of bf16 K+V more per token) and merged with the selection; None (or "none")
    drops them, as the published selection methods do. rest.py says why.
select_every: decode steps a layer keeps its selection (1 = choose afresh each step; more is faster
    on a CPU and misses what a later query turns to).
lookahead: where a token cache fetches rows (the context outgrows the GPU hot set), fetch the rows
    a layer is expected to pick while the layer below runs (`tiers/lookahead.py`); what the step
    reads is the same either way. None (auto): on CUDA, where a fetch crosses PCIe while the GPU
    computes; off on a CPU, where the hot set and the host pool share memory and fetching the
    guess's rows costs more than the copies it takes off the step's path (bench/results/lookahead/).
What each default buys: bench/results/sparse-smollm2.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .budget_plan import SPLITS
from .policies import make_policy
from .policy import SelectionPolicy
from .rest import Rest, parse_rest

__all__ = ["SparseConfig"]


@dataclass(frozen=True)
class SparseConfig:
    budget: int | float
    policy: SelectionPolicy | str = "token"
    split: str = "adaptive"
    whole_below: float = 0.5
    select_every: int = 1
    rest: Rest | str | None = Rest()
    lookahead: bool | None = None

    def __post_init__(self):
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ConfigError(f"budget must be tokens (int >= 1) or a fraction in (0, 1), got {b!r}")
        if isinstance(b, int) and b < 1:
            raise ConfigError(f"budget in tokens must be >= 1, got {b!r}")
        if isinstance(b, float) and not 0.0 < b < 1.0:
            raise ConfigError(f"budget as a fraction must be in (0, 1), got {b!r}")
        if isinstance(self.policy, str):
            object.__setattr__(self, "policy", make_policy(self.policy))
        elif not isinstance(self.policy, SelectionPolicy):
            raise ConfigError(f"policy must be a policy name or a SelectionPolicy, got {self.policy!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {self.split!r}")
        w = self.whole_below
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise ConfigError(f"whole_below must be a number in [0, 1], got {w!r}")
        e = self.select_every
        if isinstance(e, bool) or not isinstance(e, int) or e < 1:
            raise ConfigError(f"select_every must be a positive integer, got {e!r}")
        if self.lookahead is not None and not isinstance(self.lookahead, bool):
            raise ConfigError(f"lookahead must be True, False or None (auto), got {self.lookahead!r}")
        if self.rest is None or isinstance(self.rest, str):
            object.__setattr__(self, "rest", parse_rest(self.rest))
        elif not isinstance(self.rest, Rest):
            raise ConfigError(f"rest must be a Rest, kNvM (e.g. k4v2) or none, got {self.rest!r}")

    @property
    def policy_name(self) -> str:
        return self.policy.name
