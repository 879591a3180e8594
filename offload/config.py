"""`OffloadConfig`: every knob of the runtime in one frozen, validated dataclass.

Later layers (tiers, sparse selection) read their fields from here; the CLI maps its flags onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .errors import ConfigError

__all__ = ["OffloadConfig", "SELECTION_POLICIES", "LAYER_BUDGETS"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_STORES = ("dense", "tiered")
# Chunk-selection policies of sparse decode (offload/tiers/selection.py): ours first, then baselines.
SELECTION_POLICIES = ("bound", "token", "quest", "landmark", "snapkv", "h2o")
LAYER_BUDGETS = ("uniform", "squeeze", "adaptive")


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


SPARSE_CHUNK = 16  # default chunk with a budget: selection granularity (see kv_chunk)
TOKEN_CHUNK = 8  # policy "token"'s: its sketches are per token, so finer chunks cost no abstract bytes
DENSE_CHUNK = 64  # default chunk without: transfer size


@dataclass(frozen=True)
class OffloadConfig:
    """Runtime configuration.

    ctx: context window in tokens (prompt + generated); None = the model's trained context.
    prefill_chunk: tokens per chunk in layer-major prefill; bounds activation memory.
    device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N".
    dtype: "auto" (bf16 on CUDA, fp32 on CPU: bf16 matmuls are 4-5x slower on CPU) or a dtype name.
    kv_store: "dense" keeps every KV entry on the compute device; "tiered" spreads chunks over the
        GPU pool, the pinned host pool and the disk store.
    kv_chunk: tokens per KV chunk, the unit of placement, transfer and (select_unit "chunk") selection;
        None = with a budget 8 for policy "token", 16 for the others (their abstracts are per chunk:
        halving the chunk doubles them), 64 without (`chunk`). Measured on SmolLM2 at 4k, budget
        1/16: the best possible choice of 16-token chunks keeps 0.887 of the attention mass, of
        64-token chunks 0.827; `token` with 8-token chunks vs 16: needle probe 0.98 vs 0.96 of
        full attention's value tokens, recall 0.836 vs 0.798, greedy agreement 1.000 vs 0.996, the
        same CPU decode speed and +0.05-0.15 s of chunk emission per 8k prefill
        (bench/results/sparse-smollm2.md); without selection bigger chunks move faster and cost
        less bookkeeping.
    sinks / window: leading tokens and most recent tokens always kept on the compute device.
    gpu_mem / host_mem: byte limits for the GPU hot set and the host pool (None = measured).
    disk_dir: where spill files and sessions' scratch go (None = a private dir under the cache).
    compress: zstd on disk chunks; None = on where it pays (bf16 KV), off otherwise.
    budget: sparse decode — KV tokens a layer attends to per step beyond sinks + window: an int is
        tokens, a float in (0, 1) a fraction of the current context; None = everything (dense
        attention). A budget needs the tiered store: with kv_store="dense" the tiered store is used
        anyway (`store_kind`), since selection, abstracts and fetching live there.
    rank: r of the low-rank abstracts (policies "token", "bound"); None = 16 for "bound", and for
        "token" the most its int8 sketches can have within 1/8 of bf16 KV: head_dim / 2 - 4 (28 for
        SmolLM2, 60 for head dim 128), also the cap of a larger r.
    policy: selection policy: "token" (default, ours: per-token low-rank sketches of the keys;
        picks single tokens (select_unit) by their upper bound of q.k — the one key a per-chunk
        summary hides — and by the attention mass they estimate, see bound_share), "bound" (ours:
        the same bound per chunk, a box), "quest" (per-channel min/max), "landmark" (ShadowKV-style mean
        key), "snapkv" (static, from the prompt's last queries), "h2o" (accumulated attention,
        evicting). SmolLM2, 4k, 1/16, 5 RULER tasks x 10 samples: score vs full 1.11 (token), 0.86
        (bound), 1.05 (snapkv), 1.02 (landmark); bench/results/sparse-smollm2.md.
    layer_budget: "adaptive" (default: the split that keeps the most of the prompt's last queries'
        attention, each layer at least a quarter of the uniform budget: tiers/adaptive_budgets.py;
        SmolLM2 4k, 1/16: recall 0.951 vs 0.947, needle probe 1.01 vs 1.00 of dense), "uniform"
        (every layer the same budget) or "squeeze" (SqueezeAttention: the third of layers whose
        attention changes the hidden state least gets less); the total is unchanged.
    whole_below: a layer whose best possible chunk selection at the budget keeps less than this
        share of the prompt's last queries' attention (measured at prefill) is attended whole while
        it fits in its GPU slots — at most max(1, layers // 8) of them (tiers/whole_layers.py);
        0 = never. SmolLM2: layer 0 alone (0.42 at 4k, 1/16; the others 0.66 and up).
    bound_share: policy "token" — the share of each layer's chunk budget picked by the upper bound
        (a lone key that matters: a needle, a copy head's target); the rest goes to the chunks with
        the most attention mass estimated from the same per-token sketches (attention spread over
        many keys, which a max over single keys misses). 1 = by the bound alone, 0 = by the estimate
        alone. SmolLM2 4k, 1/16: recall 0.798 at 0.25 vs 0.736 at 1 (oracle 0.848).
    select_every: decode steps a layer keeps its chunk selection; 1 (default) = choose afresh at
        every step. A kept selection is made afresh anyway when a chunk leaves the window (every
        `chunk` steps), so values above the chunk size act as the chunk size. A speed option: on a
        CPU scoring every chunk costs more than the attention (SmolLM2 8k, 1/16: 1.30x HF full
        fresh, 1.69-1.77x at 16, where attending to sinks + window only gives 1.75-1.83x), and
        attention recall barely moves (4k: 0.798 -> 0.785); but the query that finds an answer's
        needle is the one at the answer's step — at 16 the demo's lighthouse question gets the
        wrong age (16-token chunks), and the needle probe at 4k (value tokens x full attention)
        falls from 0.98 to 0.81 at 4 and 0.57 at 16. Nor can a cheap test say when a kept selection went stale: a
        layer's query moves too much from step to step (median cosine 0.86 to the previous one;
        every head >= 0.8 at 38 % of steps; bench/query_drift.py, sparse-smollm2.md session 7).
    select_unit: what a selection picks — "token" (policy "token" only: single tokens by their
        sketches, read out of the chunks that hold them) or "chunk" (whole chunks); None = "token"
        for policy "token", "chunk" for the others (their abstracts are per chunk). Chunks stay
        the unit of placement and transfer either way. SmolLM2 4k, 1/16, `token`: needle probe
        1.00 of full attention's value tokens by token vs 0.98 by 8-token chunks, attention recall
        0.93 vs 0.86 (sparse-smollm2.md, session 8).
    """

    ctx: int | None = None
    prefill_chunk: int = 512
    device: str = "auto"
    dtype: str = "auto"
    kv_store: str = "dense"
    kv_chunk: int | None = None
    sinks: int = 4
    window: int = 64
    gpu_mem: int | None = None
    host_mem: int | None = None
    disk_dir: str | None = None
    compress: bool | None = None
    budget: int | float | None = None
    rank: int | None = None
    policy: str = "token"
    layer_budget: str = "adaptive"
    whole_below: float = 0.5
    bound_share: float = 0.25
    select_every: int = 1
    select_unit: str | None = None

    def __post_init__(self):
        _positive_int("ctx", self.ctx, allow_none=True)
        _positive_int("prefill_chunk", self.prefill_chunk)
        _positive_int("kv_chunk", self.kv_chunk, allow_none=True)
        _positive_int("gpu_mem", self.gpu_mem, allow_none=True)
        _positive_int("host_mem", self.host_mem, allow_none=True)
        for name in ("sinks", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.kv_store not in _STORES:
            raise ConfigError(f"kv_store must be one of {_STORES}, got {self.kv_store!r}")
        if self.compress not in (None, True, False):
            raise ConfigError(f"compress must be None, True or False, got {self.compress!r}")
        b = self.budget
        if b is not None:
            if isinstance(b, bool) or not isinstance(b, (int, float)):
                raise ConfigError(f"budget must be None, tokens (int >= 1) or a fraction in (0, 1), "
                                  f"got {b!r}")
            if isinstance(b, int) and b < 1:
                raise ConfigError(f"budget in tokens must be >= 1, got {b!r}")
            if isinstance(b, float) and not 0.0 < b < 1.0:
                raise ConfigError(f"budget as a fraction must be in (0, 1), got {b!r}")
        _positive_int("rank", self.rank, allow_none=True)
        _positive_int("select_every", self.select_every)
        if self.policy not in SELECTION_POLICIES:
            raise ConfigError(f"policy must be one of {SELECTION_POLICIES}, got {self.policy!r}")
        if self.select_unit not in (None, "token", "chunk"):
            raise ConfigError(f"select_unit must be None, 'token' or 'chunk', got {self.select_unit!r}")
        if self.select_unit == "token" and self.policy != "token":
            raise ConfigError(f"select_unit='token' needs policy 'token' (per-token sketches), "
                              f"policy {self.policy!r} scores whole chunks")
        if self.layer_budget not in LAYER_BUDGETS:
            raise ConfigError(f"layer_budget must be one of {LAYER_BUDGETS}, got {self.layer_budget!r}")
        for name in ("whole_below", "bound_share"):
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1], got {w!r}")
        dev = self.device
        if dev != "auto" and not (dev == "cpu" or dev == "cuda" or dev.startswith("cuda:")):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} asked for, but torch sees no CUDA device")

    @property
    def sparse(self) -> bool:
        """True when decode attends to a selection (a budget is set)."""
        return self.budget is not None

    @property
    def chunk(self) -> int:
        """Tokens per KV chunk: `kv_chunk`, or its default for this config (see the class doc)."""
        if self.kv_chunk is not None:
            return self.kv_chunk
        if not self.sparse:
            return DENSE_CHUNK
        return TOKEN_CHUNK if self.policy == "token" else SPARSE_CHUNK

    @property
    def selects_tokens(self) -> bool:
        """Sparse decode picks single tokens rather than whole chunks (`select_unit`)."""
        if self.select_unit is not None:
            return self.select_unit == "token"
        return self.policy == "token"

    @property
    def store_kind(self) -> str:
        """The KV store this config runs on: "tiered" when asked for or when sparse decode is on."""
        return "tiered" if self.sparse else self.kv_store

    def torch_device(self) -> torch.device:
        """The compute device this config resolves to on this machine."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        """The compute dtype: bf16 on CUDA, fp32 on CPU, unless set."""
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def replace(self, **changes) -> "OffloadConfig":
        """A copy with `changes` applied (and validated)."""
        return replace(self, **changes)
