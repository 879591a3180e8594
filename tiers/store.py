"""`TieredKVStore`: the `KVStore` protocol over the GPU pool, the host pool and the disk store.

Per layer (see `layout.ChunkLayout`): sinks and the recent window sit in one preallocated device
buffer [2, R, S + W + C, D] (sinks at [:S], window at [S:]); the body is chunks placed by the
`TierManager` (placement) and moved by `Transfer` (mechanism). Sizes come from the `StoreSpec`.

The store keeps placement and bytes. Attention reads it through a public view (`store_view.py`)
in `decode_attention.py` (`sparse_attention`: a decode step over the `Selector`'s choice — the
Triton kernel on CUDA, the `WorkingSet` on CPU) and `rounds.py` (`attend`: exact attention in
rounds of at most the layer's GPU slots, over every chunk or a given selection, whatever the
budget). A budget covering every chunk selects None: the step is exact, as dense.

`truncate(n)` restores the canonical layout for n tokens: chunks from m(n) on are freed (slots, host
slots, disk tail, token cache rows), and the tokens after the last kept chunk are read back into
the window: a store truncated to n is identical to one that was fed n tokens. With
`spec.token_slots` the hot set of token selections is a `TokenCache` of single rows.
"""

from __future__ import annotations

import torch

from offload.config import OffloadConfig
from offload.sparse.policy import Geometry
from offload.sparse.selector import Selector
from offload.store_spec import StoreSpec

from .block_table import BlockTable
from .decode_attention import DecodeAttention
from .disk import DiskStore
from .gpu import GpuPool
from .host import HostPool
from .manager import HOST, TierManager, slot_runs
from .rounds import attend_rounds
from .spill import SpillDir
from .store_view import StoreView
from .token_cache import TokenCache
from .transfer import Transfer

__all__ = ["TieredKVStore"]


class TieredKVStore(StoreView):
    """KV store spread over the GPU hot set, pinned host memory and mmap'd disk (see module doc).

    n_layers, n_kv_heads, head_dim, dtype, device: KV geometry and compute placement; config:
    OffloadConfig; batch: sequences a step (R = batch * n_kv_heads); spec: given, or derived here.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, dtype, device,
                 config: OffloadConfig | None = None, batch: int = 1, spec: StoreSpec | None = None):  # fmt: skip
        if spec is None:
            config = config if config is not None else OffloadConfig()
            spec = StoreSpec.derive(config, n_layers, n_kv_heads, head_dim, dtype, device, batch)
        self.spec = spec
        self.n_layers, self.batch, self.n_kv_heads = n_layers, batch, n_kv_heads
        self.device = spec.device
        self.layout = lay = spec.layout
        self._gpu = GpuPool(lay, list(spec.gpu_slots), self.device)
        self._host = HostPool(lay, spec.host_chunks, pin=self.device.type == "cuda")
        self._disk: DiskStore | None = None  # created at the first spill: no files otherwise
        self._mgr = TierManager(list(spec.gpu_slots), spec.host_chunks)
        self._xfer = Transfer(self.device, lay)
        self._table = BlockTable(self._gpu.base, self.device, spec.capacity)  # chunk -> slot, for the kernel
        self._tokens = TokenCache(n_layers, spec.token_slots, head_dim, dtype, self.device) if spec.token_slots else None
        shape = (n_layers, 2, lay.rows, lay.edge_capacity, head_dim)
        self._edge = torch.zeros(shape, dtype=dtype, device=self.device)
        self._n = [0] * n_layers
        self._closed = False
        self.selector: Selector | None = None  # sparse decode: selection state, and its attention
        self._decode: DecodeAttention | None = None
        if spec.sparse is not None:
            geometry = Geometry(n_layers, batch, n_kv_heads, head_dim, lay.chunk, self.device, lay.sinks,
                                spec.capacity, dtype)  # fmt: skip
            self.selector = Selector(spec.sparse, geometry, list(spec.gpu_slots))
            self._decode = DecodeAttention(self, self.selector)

    # -- KVStore protocol ------------------------------------------------------------------------
    def layer_len(self, layer: int) -> int:
        return self._n[layer]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append t tokens (k, v [B, Hkv, t, D]); full chunks beyond the window join the body."""
        self._check_open()
        lay = self.layout
        b, h, t, d = k.shape
        if (b * h, d) != (lay.rows, lay.head_dim) or v.shape != k.shape:
            raise ValueError(f"append: k/v {tuple(k.shape)}/{tuple(v.shape)} do not match "
                             f"B*Hkv={lay.rows}, D={lay.head_dim}")  # fmt: skip
        kr = k.reshape(lay.rows, t, d).to(self.device, lay.dtype)  # [R, t, D]
        vr = v.reshape(lay.rows, t, d).to(self.device, lay.dtype)
        n, s, c = self._n[layer], lay.sinks, lay.chunk
        edge = self._edge[layer]  # [2, R, E, D]
        take = min(t, s - lay.sink_len(n))
        if take > 0:
            edge[0, :, n : n + take] = kr[:, :take]
            edge[1, :, n : n + take] = vr[:, :take]
        nk, nv, r = kr[:, take:], vr[:, take:], t - take
        win = edge[:, :, s:]  # [2, R, W + C, D]
        w = lay.window_len(n)
        emit = lay.body_chunks(n + t) - (m := self._mgr.n_chunks(layer))  # m: body chunks before
        if emit:  # chunks 0..emit-1 of the stream window[:w] ++ new[:r], in one tensor
            if self.selector is not None and m == 0:
                # the layer's first chunks: a summary's basis comes from every key it holds (the prompt)
                self.selector.before_chunks(layer, torch.cat([edge[0, :, : lay.sink_len(n)], win[0, :, :w], kr], 1))
            e = emit * c - w
            chunks = win[:, :, : emit * c] if e <= 0 else torch.cat([win[:, :, :w], torch.stack([nk[:, :e], nv[:, :e]])], 2)
            # [emit, 2, R, C, D]: each chunk contiguous (one copy for all; `win` is rewritten below)
            chunks = chunks.reshape(2, lay.rows, emit, c, d).permute(2, 0, 1, 3, 4).contiguous()
            try:
                self._add_chunks(layer, chunks, hot=t <= c)
            except BaseException:  # a full disk (or Ctrl-C) mid-way: the layer stays as it was
                self._drop_chunks(layer, m)
                raise
        start, new_w = emit * c, w + r - emit * c
        if 0 < start < w:
            win[:, :, : w - start] = win[:, :, start:w].clone()
        if start < w:
            win[0, :, w - start : new_w], win[1, :, w - start : new_w] = nk, nv
        else:
            win[0, :, :new_w], win[1, :, :new_w] = nk[:, start - w :], nv[:, start - w :]
        self._n[layer] = n + t

    def read_layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token of `layer` on the compute device, k, v [B, Hkv, n, D] (fresh tensors)."""
        self._check_open()
        lay, n = self.layout, self._n[layer]
        out = torch.empty(2, lay.rows, n, lay.head_dim, dtype=lay.dtype, device=self.device)
        self._xfer.settle()
        ns, m = lay.sink_len(n), self._mgr.n_chunks(layer)
        out[:, :, :ns] = self._edge[layer, :, :, :ns]
        for j in range(m):
            p0 = lay.chunk_start(j)
            self._read_chunk(layer, j, out[:, :, p0 : p0 + lay.chunk])
        p0 = lay.chunk_start(m)
        out[:, :, p0:n] = self._edge[layer, :, :, lay.sinks : lay.sinks + max(0, n - p0)]
        shape = (self.batch, self.n_kv_heads, n, lay.head_dim)
        return out[0].reshape(shape), out[1].reshape(shape)

    def attend(self, layer: int, q: torch.Tensor, scaling: float, sliding_window: int | None = None,
               select: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Exact attention of q [B, H, Lq, D] over the stored tokens of `layer` (the last Lq are the
        queries' own, causal bottom-right), in rounds (`rounds.py`). Returns [B, Lq, H, D].

        select: None = every body chunk; or int [Hkv, k] (or [B*Hkv, k]) ids per KV head, -1 =
        padding — of chunks, or of body tokens when the selector picks tokens: each head then sees
        sinks + window + its own. A decode step's sparse selection is `sparse_attention`'s."""
        self._check_open()
        return attend_rounds(self, layer, q, scaling, sliding_window, select)

    @property
    def sparse_attention(self) -> DecodeAttention | None:
        """The sparse decode step over this store's selections (None when dense; `attention.py`)."""
        return self._decode

    @property
    def obs_window(self) -> int:
        """Prompt queries per layer the prefill observer wants (the engine keeps that many)."""
        return self.spec.obs_window

    @property
    def prefill_observer(self):
        """callable(layer, q_tail, keys, scaling, attn_cos) taking prefill statistics (the prompt's
        last `spec.obs_window` queries [B, H, t, D], the layer's keys [B, Hkv, n, D], mean
        cos(h, h + attn(h))) for the selector; None when the store is not sparse."""
        if self.selector is None:
            return None
        return lambda layer, *stats: self.selector.observe(layer, *stats, self._mgr.n_chunks(layer))

    def truncate(self, n: int) -> None:
        """Forget tokens at positions >= n in every layer (canonical layout for n; see module doc)."""
        self._check_open()
        lay = self.layout
        self._xfer.settle()
        for layer in range(self.n_layers):
            if n >= self._n[layer]:
                continue
            m_old, m_new, w_new = self._mgr.n_chunks(layer), lay.body_chunks(n), lay.window_len(n)
            win = torch.empty(2, lay.rows, w_new, lay.head_dim, dtype=lay.dtype, device=self.device)
            filled, j = 0, m_new
            buf = torch.empty(lay.chunk_shape, dtype=lay.dtype, device=self.device)
            while filled < w_new and j < m_old:  # kept tokens of freed chunks go back to the window
                take = min(lay.chunk, w_new - filled)
                self._read_chunk(layer, j, buf)
                win[:, :, filled : filled + take] = buf[:, :, :take]
                filled, j = filled + take, j + 1
            s = lay.sinks
            win[:, :, filled:] = self._edge[layer, :, :, s : s + w_new - filled]
            self._drop_chunks(layer, m_new)
            self._edge[layer, :, :, s : s + w_new] = win
            self._n[layer] = n

    def stats(self) -> dict:
        """Bytes per tier (gpu_bytes includes sinks + window), pool sizes, token count, the manager's
        counters (hits: + one per (KV head, chunk or token) a sparse step read, all resident;
        misses, misses_host, misses_disk, evictions, ...) and the selector's."""
        lay = self.layout
        edge_tokens = sum(lay.sink_len(n) + lay.window_len(n) for n in self._n)
        return {
            "gpu_bytes": self._mgr.gpu_used * lay.chunk_bytes + edge_tokens * lay.token_bytes,
            "host_bytes": self._mgr.host_used * lay.chunk_bytes,
            "disk_bytes": self._disk.nbytes if self._disk is not None else 0,
            "gpu_pool_bytes": self._gpu.nbytes,
            "working_set_bytes": self._decode.nbytes if self._decode is not None else 0,
            **(self._decode.counters if self._decode is not None else {}),
            **(self.selector.counters if self.selector is not None else {}),
            **(self._tokens.counters if self._tokens is not None else {}),
            "token_cache_bytes": self._tokens.nbytes if self._tokens is not None else 0,
            "host_pool_bytes": self._host.nbytes_allocated,
            "tokens": max(self._n, default=0),
            "chunks": sum(self._mgr.n_chunks(i) for i in range(self.n_layers)),
            "disk_chunks": self._mgr.disk_chunks,
            **self._mgr.counters,
        }

    def close(self) -> None:
        """Free every pool and remove the spill files (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._decode is not None:
            self._decode.close()
        self._xfer.synchronize()
        if self._disk is not None:
            self._disk.close()
        self._gpu.close()
        self._host.close()
        self._decode = self._tokens = None
        self._edge = self._edge.new_empty(0)
        self._n = [0] * self.n_layers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def spill_files(self) -> list[str]:
        """Paths of spill files currently on disk (empty when nothing spilled)."""
        return self._disk.files() if self._disk is not None else []

    # -- internals -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        """Raise when closed; else wait for a lookahead fetch in flight (the caller changes or reads KV)."""
        if self._closed:
            raise RuntimeError("this TieredKVStore is closed")
        if self._decode is not None:
            self._decode.settle()

    def _drop_chunks(self, layer: int, m: int) -> None:
        """Forget body chunks >= m of `layer`: GPU and host slots, summaries, the disk file's tail."""
        self._mgr.truncate(layer, m)
        if self.selector is not None:
            self.selector.truncate(layer, m)  # (a new selection: the working set gathers anew)
        if self._tokens is not None:
            self._tokens.forget(layer, m * self.layout.chunk)
        if self._disk is not None:
            self._disk.drop_from(layer, m)

    def _add_chunks(self, layer: int, chunks: torch.Tensor, hot: bool) -> None:
        """Place new chunks [n, 2, R, C, D] (device): each a home copy on host or disk, maybe a GPU
        copy. Placed in order, so a slot a later chunk of the same call takes over ends up holding it."""
        places = [self._mgr.add_chunk(layer, hot=hot) for _ in range(chunks.shape[0])]
        if self.selector is not None:  # summaries from the keys [R, n*C, D], every chunk at once
            n, _, r, c, d = chunks.shape
            kv = chunks.permute(1, 2, 0, 3, 4).reshape(2, r, n * c, d)
            self.selector.add_chunks(layer, places[0].chunk, kv[0], kv[1])
        # runs of consecutive slots (prefill: most of a layer's chunks) go in one copy each
        for a, b in slot_runs([p.gpu_slot for p in places]):
            self._xfer.to_slot(chunks[a:b], self._gpu.span(layer, places[a].gpu_slot, b - a))
        for a, b in slot_runs([p.host_slot if p.home == HOST else None for p in places], self._host.arena_slots):
            self._xfer.to_host(chunks[a:b], self._host.span(places[a].host_slot, b - a))
        for p, chunk in zip(places, chunks):
            if p.home != HOST:
                if self._disk is None:
                    self._disk = DiskStore(self.layout, SpillDir(self.spec.disk_dir), self.spec.compress)
                self._disk.append(layer, p.chunk, self._xfer.to_cpu(chunk))

    def _read_chunk(self, layer: int, j: int, dst: torch.Tensor) -> None:
        """Bulk read (read_layer, truncate): chunk j into dst [2, R, C, D] on the device, from
        wherever it is, without touching the hot set. Caller has called `settle()`."""
        p = self._mgr.placement(layer, j)
        if p.gpu_slot is not None:
            dst.copy_(self._gpu.view(layer, p.gpu_slot))
        elif p.home == HOST:
            dst.copy_(self._host.view(p.host_slot), non_blocking=True)  # host slots are immutable
        else:
            buf = torch.empty(self.layout.chunk_shape, dtype=self.layout.dtype)
            self._disk.read_into(layer, j, buf)
            dst.copy_(buf)  # pageable source: synchronous, buf can go
