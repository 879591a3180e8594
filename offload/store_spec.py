"""`StoreSpec`: what an `OffloadConfig` means for one model's KV on one machine — the single place
that derives the store kind, the chunk layout, the GPU slots per layer, the host pool, the policy's
summary bytes and the prefill observation window. The stores, the session loader, the eval and the
memory plan read it; nothing else re-derives these facts.

- kind: "tiered" when asked for or when decode is sparse (selection lives in the tiered store).
- chunk: `kv_chunk`, else the selection policy's own (its summaries are per chunk), else 64.
- GPU slots per layer: `hot_set_bytes` (the config's, else the memory plan's for the model —
  `offload.plan`, what `offload-chat` prints and checks, passed in by `OffloadModel` — else, for a
  store built without a model, on CUDA half the free memory, on a CPU 1 GiB) split evenly over
  layers, capped at what `ctx` tokens need, at least one. When a token selection's context does
  not fit them, the hot set holds single rows instead: `token_slots` per layer (all KV heads
  together), beside STAGING_CHUNKS chunk slots.
- host chunks: `host_mem` bytes, else HOST_FRACTION of the available host memory; less what else
  the plan puts in host memory at `ctx`: the policy's host-resident summaries and `host_reserve`
  (the model's prefill hidden states, `offload.prefill_hidden`).
- compress: `compress`, else on for bf16 only.
- windows: per model layer its sliding window (0 = global). Sliding layers keep a ring of their
  window on the compute device (`HybridKVStore`); the layout, the slots and the summaries cover the
  global layers only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import OffloadConfig
from .hybrid_store import global_layers
from .sparse.config import SparseConfig
from .sparse.prefill_stats import OBS_TAIL
from .tiers.codec import default_compress
from .tiers.host import default_host_capacity
from .tiers.layout import ChunkLayout

__all__ = ["StoreSpec", "DENSE_CHUNK", "GPU_FRACTION", "CPU_POOL_BYTES", "STAGING_CHUNKS",
           "TOKEN_SLOT_INDEX"]

DENSE_CHUNK = 64  # chunk without selection: transfer size
GPU_FRACTION = 0.5  # of free device memory for the hot set of a store built without a plan
CPU_POOL_BYTES = 1 << 30  # default "GPU" pool on a CPU-only machine (it is host memory there)
STAGING_CHUNKS = 4  # chunk slots a layer keeps beside a token cache (new chunks, exact rounds)
TOKEN_SLOT_INDEX = 16  # bytes a token-cache slot adds to its row for finding it (owner, stamp: int64)


@dataclass(frozen=True)
class StoreSpec:
    """kind: "dense" | "tiered"; layout: ChunkLayout; device; batch; ctx (None = unbounded);
    gpu_slots: per layer; token_slots: per layer, (KV head, token) rows of a token cache (0: none);
    host_chunks; compress; disk_dir; sparse: SparseConfig or None;
    capacity: body chunks per layer to preallocate for summaries and tables; obs_window: prompt
    queries prefill keeps per layer for the selector (0 when dense); windows: per model layer, its
    sliding window or 0 (empty: every layer global); layout.n_layers counts the global ones (1 when
    none is: no inner store then)."""

    kind: str
    layout: ChunkLayout
    device: torch.device
    batch: int
    ctx: int | None
    gpu_slots: tuple[int, ...]
    host_chunks: int
    compress: bool
    disk_dir: str | None
    sparse: SparseConfig | None
    capacity: int
    obs_window: int
    windows: tuple[int, ...] = ()
    token_slots: int = 0

    @classmethod
    def derive(cls, config: OffloadConfig, n_layers: int, n_kv_heads: int, head_dim: int,
               dtype: torch.dtype, device, batch: int = 1, planned_hot_set: int | None = None,
               windows: tuple[int, ...] = (), host_reserve: int = 0) -> "StoreSpec":  # fmt: skip
        """The spec of `config` for a model of this KV geometry on `device`; planned_hot_set: the
        memory plan's hot set bytes, used when the config sets none; windows: per layer, its sliding
        window (0 = global; empty: all global); host_reserve: host bytes the caller keeps beside the
        host pool (the prefill's hidden states)."""
        device = torch.device(device)
        windows = tuple(int(w) for w in windows) if any(windows) else ()
        if windows and len(windows) != n_layers:
            raise ValueError(f"{len(windows)} layer windows for {n_layers} layers")
        n_layers = global_layers(windows, n_layers)  # what the layout holds
        sparse = config.sparse
        kind = "tiered" if sparse is not None else config.kv_store
        lay = ChunkLayout(max(1, n_layers), batch * n_kv_heads, cls.chunk_of(config), head_dim, dtype,
                          config.sinks, config.window)  # fmt: skip
        hot = config.hot_set_bytes if config.hot_set_bytes is not None else planned_hot_set
        if hot is None:
            hot = int(torch.cuda.mem_get_info(device)[0] * GPU_FRACTION) if device.type == "cuda" else CPU_POOL_BYTES
        slots = max(1, hot // (lay.chunk_bytes * max(1, n_layers)))
        if config.ctx is not None:
            slots = min(slots, max(1, lay.body_chunks(config.ctx)))
        tokens = 0
        if sparse is not None and sparse.policy.selects_tokens and config.ctx is not None \
                and lay.body_chunks(config.ctx) > slots:  # fmt: skip
            # a token selection's picks fall ~one per chunk: chunk slots sized for the budget cannot
            # hold a step's chunks, so the hot set holds single rows (tiers/token_cache.py)
            tokens = hot // (cls.token_slot_bytes(head_dim, lay.itemsize) * max(1, n_layers))
            slots = min(slots, STAGING_CHUNKS) if tokens else slots
        if config.host_mem is not None:
            host_chunks = config.host_mem // lay.chunk_bytes
        else:
            host_chunks = default_host_capacity(lay.chunk_bytes)
        spec = cls(
            kind=kind, layout=lay, device=device, batch=batch, ctx=config.ctx, gpu_slots=(slots,) * n_layers,
            host_chunks=host_chunks, compress=default_compress(dtype, config.compress), disk_dir=config.disk_dir,
            sparse=sparse, capacity=lay.body_chunks(config.ctx) + 1 if config.ctx else 64,
            obs_window=OBS_TAIL if sparse is not None else 0, windows=windows, token_slots=tokens,
        )  # fmt: skip
        beside = host_reserve + (spec.host_summary_bytes(config.ctx) if config.ctx else 0)
        if not beside:
            return spec
        return dataclasses.replace(spec, host_chunks=max(0, host_chunks - -(-beside // lay.chunk_bytes)))

    @staticmethod
    def token_slot_bytes(head_dim: int, itemsize: int) -> int:
        """Hot-set bytes of one token-cache slot: a (KV head, token) row's k and v, and its index."""
        return 2 * head_dim * itemsize + TOKEN_SLOT_INDEX

    @staticmethod
    def chunk_of(config: OffloadConfig) -> int:
        """Tokens per chunk: `kv_chunk`, else the selection policy's, else DENSE_CHUNK."""
        if config.kv_chunk is not None:
            return config.kv_chunk
        return config.sparse.policy.chunk if config.sparse is not None else DENSE_CHUNK

    def new_store(self):
        """An empty KV store of this spec: `DenseKVStore` or `TieredKVStore`, inside a `HybridKVStore`
        when some layers slide."""
        if not self.windows:
            return self._inner_store()
        from .hybrid_store import HybridKVStore

        lay = self.layout
        inner = self._inner_store() if not all(self.windows) else None
        return HybridKVStore(self.windows, inner, (self.batch, self.n_kv_heads, lay.head_dim), lay.dtype, self.device)

    def _inner_store(self):
        if self.kind == "tiered":
            from .tiers.store import TieredKVStore

            lay = self.layout
            return TieredKVStore(lay.n_layers, self.n_kv_heads, lay.head_dim, lay.dtype, self.device,
                                 batch=self.batch, spec=self)  # fmt: skip
        from .kvstore import DenseKVStore

        return DenseKVStore(self.n_layers, self.n_kv_heads, self.layout.head_dim, self.layout.dtype, self.device,
                            batch=self.batch)  # fmt: skip

    @property
    def n_layers(self) -> int:
        return self.layout.n_layers

    @property
    def n_kv_heads(self) -> int:
        return self.layout.rows // self.batch

    @property
    def selects_tokens(self) -> bool:
        return self.sparse is not None and self.sparse.policy.selects_tokens

    @property
    def unit(self) -> int:
        """Tokens per unit a selection picks: 1 (single tokens) or the chunk."""
        return 1 if self.selects_tokens else self.layout.chunk

    def summary_bytes(self, n_tokens: int) -> int:
        """Compute-device bytes of the selection policy's key summary and of the rest (low-precision
        K/V of every token, SparseConfig.rest) for n_tokens (all layers and heads)."""
        if self.sparse is None:
            return 0
        lay, rest = self.layout, self.sparse.rest
        per = self._placed()[0]
        per += 0 if rest is None else rest.bytes_per_token(lay.head_dim, lay.itemsize)
        return int(per * lay.rows * lay.n_layers * n_tokens)

    def host_summary_bytes(self, n_tokens: int) -> int:
        """Host bytes of the key summary for n_tokens (a two-level policy's token sketches, when it
        keeps them there)."""
        if self.sparse is None:
            return 0
        return int(self._placed()[1] * self.layout.rows * self.layout.n_layers * n_tokens)

    def _placed(self) -> tuple[float, float]:
        lay = self.layout
        return self.sparse.policy.placed_bytes(lay.head_dim, lay.chunk, lay.itemsize, self.device.type)
