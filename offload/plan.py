"""Memory plan: what a model at a context length needs on the GPU, in host memory and on disk,
computed from its transformers config before any weight is loaded.

GPU = weights + runtime reserve + prefill activations + sinks/window buffers + abstracts + hot set.
Layer-major prefill holds one layer's KV at full context, the hidden states of the whole prompt
(on the device, or past a size in host memory: `offload.prefill_hidden`) and one prefill chunk's
projections and MLP. The hot set gets what is left, capped at the whole body of the KV; it must
reach `MIN_BUDGET_TOKENS` per layer. Every chunk also has a home copy: in the host pool while it has
room, the rest on disk. Host memory = host pool + host-resident summaries (a two-level policy's
token sketches) + the prefill's hidden states when they live there.
Abstracts are the selection policy's key summary (`SelectionPolicy.summary_bytes`, through the
`StoreSpec`) and the rest (low-precision K/V of every token, `sparse.rest`); none without sparse
decode.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from .config import OffloadConfig
from .errors import ConfigError
from .hybrid_store import global_layers, layer_windows, ring_tokens
from .prefill_hidden import prefill_hidden_bytes
from .tiers.host import HOST_FRACTION

__all__ = ["MemoryPlan", "plan", "model_dims"]

GIB = 1 << 30
CUDA_RESERVE = 512 << 20  # CUDA context, cuBLAS workspace, allocator slack
MIN_BUDGET_TOKENS = 1024  # least hot set per layer worth decoding with


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per tier for one model and context (all sizes in bytes; budget in tokens per layer)."""

    ctx: int
    dtype: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    n_params: int
    kv_token_bytes: int  # one token, all layers, k + v
    kv_bytes: int  # ctx tokens
    weights_bytes: int
    reserve_bytes: int
    prefill_bytes: int
    edge_bytes: int  # sinks + window buffers, all global layers
    abstracts_bytes: int
    hot_set_bytes: int
    budget_tokens: int
    gpu_total_bytes: int
    gpu_mem: int
    host_pool_bytes: int
    host_mem: int
    disk_bytes: int
    disk_free: int | None
    disk_dir: str
    fits: bool
    reasons: tuple[str, ...]
    max_ctx: int
    body_tokens: int = 0  # tokens past sinks + window, in whole chunks: what a hot set covering the KV holds
    device: str = "cuda"  # what the plan plans for
    decode: str = ""  # which decode runs and why (`offload.decode_choice`), when a command chose
    ring_bytes: int = 0  # sliding-window layers' rings (`HybridKVStore`), on the GPU
    sliding_layers: int = 0  # of n_layers; their KV is the rings', never tiered
    host_summary_bytes: int = 0  # key summaries kept in host memory (token2's sketches, sketches="host")
    host_hidden_bytes: int = 0  # the prefill's hidden states, when kept in host memory

    @property
    def gpu_fits(self) -> bool:
        """The GPU holds the weights, the activations, the summaries and a hot set of at least
        `MIN_BUDGET_TOKENS` per layer (host memory and disk aside)."""
        return self.gpu_total_bytes <= self.gpu_mem and self.budget_tokens >= min(self.body_tokens, MIN_BUDGET_TOKENS)

    @property
    def whole_kv_fits(self) -> bool:
        """The plan fits and its hot set holds every chunk: exact attention reads only the GPU."""
        return self.fits and self.budget_tokens >= self.body_tokens

    def to_dict(self) -> dict:
        """Plain JSON-serializable dict (what `--dry-run --json` prints)."""
        d = dataclasses.asdict(self)
        d["reasons"] = list(self.reasons)
        return d

    def __str__(self) -> str:
        g = lambda b: f"{b / GIB:9.2f} GiB"  # noqa: E731
        rows = [
            ("model", f"{self.n_params / 1e9:.2f} B params, {self.n_layers} layers"
                      + (f" ({self.sliding_layers} sliding-window)" if self.sliding_layers else "")
                      + f", {self.n_kv_heads} KV heads x {self.head_dim}, {self.dtype} on {self.device}"),
            ("KV cache", f"{g(self.kv_bytes)}  ({self.kv_token_bytes // 1024} KiB/token x {self.ctx:,})"),
            ("GPU  weights", g(self.weights_bytes)),
            ("GPU  prefill activations", g(self.prefill_bytes)),
            ("GPU  sinks + window", g(self.edge_bytes)),
            *([("GPU  sliding-window rings", g(self.ring_bytes))] if self.sliding_layers else []),
            ("GPU  abstracts + rest", g(self.abstracts_bytes)),
            ("GPU  hot set", f"{g(self.hot_set_bytes)}  ({self.budget_tokens:,} tokens/layer)"),
            ("GPU  reserve", g(self.reserve_bytes)),
            ("GPU  total / limit", f"{g(self.gpu_total_bytes)} / {g(self.gpu_mem).strip()}"),
            *([("host token sketches", g(self.host_summary_bytes))] if self.host_summary_bytes else []),
            *([("host prefill hidden states", g(self.host_hidden_bytes))] if self.host_hidden_bytes else []),
            ("host pool / host memory", f"{g(self.host_pool_bytes)} / {g(self.host_mem).strip()}"),
            ("disk", f"{g(self.disk_bytes)}  in {self.disk_dir}"
                     + ("" if self.disk_free is None else f" ({self.disk_free / GIB:.1f} GiB free)")),
            ("fits", "yes" if self.fits else f"NO — largest context that fits: {self.max_ctx:,}"),
        ]  # fmt: skip
        if self.decode:
            rows.append(("decode", self.decode))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows] + [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def model_dims(config_or_model) -> dict:
    """Sizes the plan needs from a transformers config (or a model / a dict holding one)."""
    cfg = getattr(config_or_model, "config", config_or_model)
    if isinstance(cfg, dict):
        from types import SimpleNamespace

        cfg = SimpleNamespace(**cfg)
    top = cfg
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {
        "n_layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or heads, "head_dim": head_dim,
        "vocab": cfg.vocab_size, "intermediate": cfg.intermediate_size,
        "tied": bool(getattr(top, "tie_word_embeddings", getattr(cfg, "tie_word_embeddings", False))),
        "bias": bool(getattr(cfg, "attention_bias", False)), "windows": layer_windows(cfg),
    }  # fmt: skip


def _n_params(m: dict) -> int:
    h, d, hq, hkv = m["hidden"], m["head_dim"], m["heads"], m["kv_heads"]
    attn = h * hq * d + 2 * h * hkv * d + hq * d * h + (hq * d + 2 * hkv * d if m["bias"] else 0)
    layer = attn + 3 * h * m["intermediate"] + 2 * h  # gated MLP + two norms
    embed = m["vocab"] * h
    return m["n_layers"] * layer + embed * (1 if m["tied"] else 2) + h


def _disk_free(path: Path) -> int | None:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def plan(config_or_model, ctx: int, gpu_mem: int | None = None, host_mem: int | None = None,
         disk_dir: str | os.PathLike | None = None, *, offload: OffloadConfig | None = None,
         dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> MemoryPlan:  # fmt: skip
    """The memory plan for `ctx` tokens.

    gpu_mem: device memory to plan for (None: the CUDA device's total, or the RAM when the compute
    device is the CPU); device: the compute device planned for (None: CUDA when torch sees one, else
    the CPU; a CUDA device this machine lacks needs gpu_mem); host_mem: host memory (None: available now); disk_dir: where spill goes (None: the
    default spill root); offload: chunk/sinks/window/prefill_chunk/host_mem knobs; dtype: KV and
    weight dtype (None: offload's dtype if set, else bf16 — the GPU target)."""
    from offload.tiers.spill import default_spill_root

    offload = offload if offload is not None else OffloadConfig()
    if dtype is None:
        dtype = torch.bfloat16 if offload.dtype == "auto" else offload.torch_dtype()
    m = model_dims(config_or_model)
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if gpu_mem is None:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"planning for {device} on a machine where torch sees no CUDA device needs "
                              "the GPU's memory: pass --gpu-mem (e.g. 24G)")
        cuda = device.type == "cuda"
        gpu_mem = torch.cuda.get_device_properties(device).total_memory if cuda else psutil.virtual_memory().total
    host_mem = psutil.virtual_memory().available if host_mem is None else host_mem
    disk = Path(disk_dir) if disk_dir is not None else default_spill_root()
    free = _disk_free(disk)
    one = lambda c: _plan_at(m, c, dtype, gpu_mem, host_mem, disk, free, offload, device.type)  # noqa: E731
    p = one(ctx)
    if p.fits:
        return dataclasses.replace(p, max_ctx=ctx)
    lo, hi = 0, ctx - 1  # largest c < ctx that fits (fits is monotone in c)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if one(mid).fits else (lo, mid - 1)
    return dataclasses.replace(p, max_ctx=lo if one(lo).fits else 0)


def _plan_at(m, ctx, dtype, gpu_mem, host_mem, disk, free, offload, device) -> MemoryPlan:
    from .store_spec import StoreSpec

    it = torch.empty((), dtype=dtype).element_size()
    hkv, d, windows = m["kv_heads"], m["head_dim"], m.get("windows", ())
    spec = StoreSpec.derive(offload, m["n_layers"], hkv, d, dtype, device, planned_hot_set=1,
                            windows=windows)  # chunk, summaries (their placement and dtype: the device's)  # fmt: skip
    L = global_layers(windows, m["n_layers"])  # layers whose KV grows
    c = spec.layout.chunk
    tok_layer = 2 * hkv * d * it
    rings = sum(ring_tokens(w) for w in windows if w) * tok_layer
    kv_token, kv = L * tok_layer, ctx * L * tok_layer
    n_params = _n_params(m)
    weights = n_params * it
    body_chunks = spec.layout.body_chunks(ctx)
    abstracts = spec.summary_bytes(ctx)  # key summary + rest (0 when dense)
    host_summaries = spec.host_summary_bytes(ctx)
    edge = L * (offload.sinks + offload.window + c) * tok_layer
    pc = min(offload.prefill_chunk, max(ctx, 1))
    hidden_dev, hidden_host = prefill_hidden_bytes(device, ctx, m["hidden"], it, pc)
    prefill = (ctx * tok_layer  # one layer's KV
               + hidden_dev  # the prompt's hidden states (or only the chunk in flight: on the host)
               + pc * (m["heads"] * d + 2 * hkv * d + m["hidden"]) * it  # chunk q, k, v, o
               + 3 * pc * m["intermediate"] * it  # chunk gate, up, act
               + m["vocab"] * 4)  # fmt: skip
    fixed = weights + CUDA_RESERVE + prefill + edge + abstracts + rings
    budget_cap = body_chunks * c
    # a hot-set token: a chunk slot's share, or (token selections) a token cache's rows with their index
    hot_token = hkv * spec.token_slot_bytes(d, it) if spec.selects_tokens else tok_layer
    budget = max(0, min(budget_cap, (gpu_mem - fixed) // max(1, L * hot_token) // c * c))
    hot = budget * L * hot_token
    want = min(budget_cap, MIN_BUDGET_TOKENS)
    host_cap = offload.host_mem if offload.host_mem is not None else int(host_mem * HOST_FRACTION)
    beside = host_summaries + hidden_host  # host memory that is not the pool
    host_pool = min(kv, max(0, host_cap - beside) // (c * tok_layer) * (c * tok_layer))
    disk_need = max(0, kv - host_pool)
    reasons = []
    if beside > host_cap:
        reasons.append(f"host: {beside / GIB:.2f} GiB of token sketches and prefill hidden states, "
                       f"{host_cap / GIB:.2f} GiB of host memory planned for")  # fmt: skip
    short = fixed + want * L * hot_token - gpu_mem
    if short > 0:
        reasons.append(f"GPU: {short / GIB:.2f} GiB short of weights + activations + a "
                       f"{want}-token hot set per layer")  # fmt: skip
        rest = spec.sparse.rest if spec.sparse is not None else None
        if rest is not None:
            freed = rest.bytes_per_token(d, it) * hkv * L * ctx
            reasons.append(f"the rest ({rest.label}: what a step does not select, at low precision) takes "
                           f"{freed / GIB:.2f} GiB of that; --rest none drops it (faster, may lose exact "
                           f"attention's answers on record lookups)")  # fmt: skip
    if disk_need and free is not None and disk_need > free:
        reasons.append(f"disk: {disk_need / GIB:.2f} GiB to spill, {free / GIB:.2f} GiB free in {disk}")
    return MemoryPlan(
        ctx=ctx, dtype=str(dtype).removeprefix("torch."), n_layers=m["n_layers"], n_kv_heads=hkv, head_dim=d,
        n_params=n_params, kv_token_bytes=kv_token, kv_bytes=kv, weights_bytes=weights,
        reserve_bytes=CUDA_RESERVE, prefill_bytes=prefill, edge_bytes=edge, abstracts_bytes=abstracts,
        hot_set_bytes=hot, budget_tokens=budget, gpu_total_bytes=fixed + hot, gpu_mem=gpu_mem,
        host_pool_bytes=host_pool, host_mem=host_mem, disk_bytes=disk_need, disk_free=free,
        disk_dir=str(disk), fits=not reasons, reasons=tuple(reasons), max_ctx=ctx, body_tokens=budget_cap,
        device=device, ring_bytes=rings, sliding_layers=m["n_layers"] - L, host_summary_bytes=host_summaries,
        host_hidden_bytes=hidden_host,
    )  # fmt: skip
