"""The sparse decode step: one query per row over sinks + window + the units its `Selector` chose.

- CPU: the `WorkingSet` (the selection gathered once while the selector keeps it, then one SDPA
  per step).
- CUDA, token selections: `kernels.token_decode_attention` (Triton) reads each selected token from
  the pool by its chunk's slot (the block table's row of the layer), no copy.
- CUDA, chunk selections: `kernels.sparse_decode_attention` (Triton) reads the pool through the
  block table, no copy.
- with a token cache (`StoreSpec.token_slots`: the layer's body does not fit its chunk slots), token
  selections read their rows from it (`TokenCache`; its misses fetched from the tiers first): the
  `WorkingSet` on a CPU, `kernels.token_decode_attention` over the cache's slots on CUDA.
- the lookahead (`lookahead.py`, where a token cache fetches): the engine hands over a guess of the
  next layer's query before this layer runs; when this layer has attended, the guess's missing rows
  are fetched (a worker thread and the copy stream on CUDA) — the next step reads the cache as always.
- the exact fallback, `rounds.attend_rounds`: when the chunks a selection needs outgrow the layer's
  GPU slots (or its tokens the cache's).
With a rest (SparseConfig.rest) each path also gives its log-sum-exp, and the body tokens a row did
not read are attended at low precision (`sparse.rest`) and merged in (`_with_rest`); a whole layer
read exactly has no rest. When every chunk of the layer has a GPU copy nothing is fetched or pinned and Python never sees the
ids (no host sync); otherwise the union of the chunks is fetched first (the host's wait for those ids
is counted, `stall_s`). Rows with budgets below the
selection's width (adaptive splits per KV head) end in -1: a real unit of the row stands in for the
gather and is masked out. h2o's mass per selected unit (`Selector.wants_mass`) comes back to the
selector after the step. Reads the store only through its public view; owns the working set.
"""

from __future__ import annotations

import time

import torch

from offload.kernels.dispatch import sparse_decode_attention, token_decode_attention

from .attention import merge_partials
from .lookahead import Lookahead
from .rounds import attend_rounds
from .working_set import WorkingSet

__all__ = ["DecodeAttention", "kernel_args", "token_kernel_args"]


class DecodeAttention:
    """Sparse decode attention of one store over its selector's choices."""

    def __init__(self, store, selector):
        self.store, self.selector = store, selector
        self.ws = WorkingSet(store.n_layers)
        self._read: list[tuple | None] = [None] * store.n_layers  # (selection, n_chunks, body mask): the rest's
        self._slots: list[tuple | None] = [None] * store.n_layers  # (selection, cache epoch, its cache slots)
        self._expected = None  # the selector's budgets the token cache was last told of
        # stall_s: host time waiting for a selection's ids (the miss path); rounds: layer steps whose
        # chunks outgrew the layer's slots (read exactly in rounds from the tiers)
        self.counters = {"stall_s": 0.0, "rounds": 0, "ahead_wait_s": 0.0}
        cfg = selector.config
        on = cfg.lookahead if cfg.lookahead is not None else store.device.type == "cuda"  # auto: see SparseConfig
        wanted = store.token_cache is not None and on and cfg.select_every == 1
        self.ahead = Lookahead(store, selector, self.counters) if wanted else None

    @property
    def nbytes(self) -> int:
        return self.ws.nbytes

    def wants_lookahead(self, layer: int) -> bool:
        """`layer`'s next step would take a guess of its query ahead (`lookahead`): its last step
        read the token cache, which has slots beyond that step's picks."""
        return self.ahead is not None and self._slots[layer] is not None and self.store.token_cache.room(layer) > 0

    def lookahead(self, layer: int, q: torch.Tensor, scaling: float) -> None:
        """q [B, H, 1, D]: the query `layer` is expected to ask this step, given before the layer below
        runs; its guessed rows are fetched while that layer finishes (`tiers/lookahead.py`)."""
        if self.ahead is not None:
            self.ahead.note(layer, q, scaling)

    def settle(self) -> None:
        """Wait for a lookahead fetch in flight (before the store's KV changes or is read)."""
        if self.ahead is not None:
            self.ahead.settle()

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()

    def attend(self, layer: int, q: torch.Tensor, scaling: float) -> torch.Tensor | None:
        """q [B, H, 1, D] -> [B, 1, H, D] over the layer's selection; None when the budget covers
        every unit (the caller attends exactly)."""
        self.settle()
        out = self._attend(layer, q, scaling)
        if self.ahead is not None:
            self.ahead.run(layer)
        return out

    def _attend(self, layer: int, q: torch.Tensor, scaling: float) -> torch.Tensor | None:
        st, sel = self.store, self.selector
        chosen = sel.select(layer, q[:, :, 0].contiguous(), st.n_chunks(layer), st.layer_len(layer), scaling)
        if chosen is None:
            return None
        c = st.layout.chunk
        select, valid = chosen, None  # select: a real unit wherever the row has none (padding)
        if sel.padded[layer]:
            valid = chosen >= 0
            select = torch.where(valid, chosen, chosen[:, :1].clamp(min=0))
        chunks = torch.div(select, c, rounding_mode="floor") if sel.tokens else select  # [R, k]
        rest = sel.rest is not None and not sel.whole[layer]
        pinned = not st.all_resident(layer)
        slots = self._token_slots(layer, chosen, select, valid) if pinned and sel.tokens else None
        if slots is not None:  # the token cache holds the selection: read it there
            out = self._cached(layer, q, scaling, chosen, slots, valid, rest)
            st.done(layer, False)
            return self._with_rest(layer, q, scaling, chosen, *out) if rest else out
        if pinned:
            t0 = time.perf_counter()
            seen = torch.zeros(st.n_chunks(layer), dtype=torch.bool, device=chunks.device)
            seen[chunks.reshape(-1)] = True  # ascending distinct ids without a sort (torch.unique's)
            ids = seen.nonzero().flatten().tolist()  # a host sync: misses are fetched by Python
            self.counters["stall_s"] += time.perf_counter() - t0
            if len(ids) > st.slot_budget(layer):  # in rounds of at most the slots, these units only
                self.counters["rounds"] += 1
                own = chosen if valid is None else chosen.masked_fill(~valid, -1)
                out = attend_rounds(st, layer, q, scaling, None, own, sel.wants_mass, want_lse=rest)
                if sel.wants_mass:
                    out, (ids_, mass) = out
                    sel.attended(layer, ids_, mass)
                return self._with_rest(layer, q, scaling, chosen, *out) if rest else out
            st.pin(layer, ids)
        hits = 0 if pinned else select.numel()  # one per (row, unit) read
        if q.is_cuda and sel.tokens:
            b, h, _, d = q.shape
            o, lse = token_decode_attention(*token_kernel_args(st, layer, q, select, valid), scaling)
            out = (o.view(b, 1, h, d), lse) if rest else o.view(b, 1, h, d)
        elif q.is_cuda:
            out = self._kernel(layer, q, scaling, select, rest)
        else:
            out = self._gathered(layer, q, scaling, chosen, select, chunks, valid, rest)
        st.done(layer, pinned, hits)
        return self._with_rest(layer, q, scaling, chosen, *out) if rest else out

    def _token_slots(self, layer, chosen, select, valid):
        """The token cache's slots [R, k] of the selection (its misses fetched), kept while the
        selection (the selector's tensor) and the layer's slots stay; None without a cache or when
        the selection outgrows it (the step then goes the chunks' way)."""
        cache = self.store.token_cache
        if cache is None:
            return None
        held = self._slots[layer]
        if held is not None and held[0] is chosen and held[1] == cache.epoch(layer):
            return held[2]
        budgets = self.selector.budgets(self.store.layer_len(layer))
        if budgets is not self._expected:  # a new plan: every layer's picks, to split the slots by
            self._expected = budgets
            rows, st = self.store.layout.rows, self.store
            cache.expect([min(sum(r) * (rows // len(r)), st.n_chunks(i) * st.layout.chunk * rows)
                          for i, r in enumerate(budgets.rows)])  # fmt: skip
        t0 = time.perf_counter()
        slots = self.store.resident_tokens(layer, select, valid)
        self.counters["stall_s"] += time.perf_counter() - t0
        self._slots[layer] = None if slots is None else (chosen, cache.epoch(layer), slots)
        return slots

    def _cached(self, layer, q, scaling, chosen, slots, valid, want_lse):
        """Attention over sinks + window + the token cache's slots [R, k] (want_lse: (out, lse))."""
        st, sel = self.store, self.selector
        cache = st.token_cache
        if q.is_cuda:
            b, h, _, d = q.shape
            args = token_kernel_args(st, layer, q, slots, valid, cache.pool_views(st.layout.rows))
            o, lse = token_decode_attention(*args, scaling)
            return (o.view(b, 1, h, d), lse) if want_lse else o.view(b, 1, h, d)
        out = self.ws.attend(st, layer, q, scaling, chosen, lambda: cache.gather(slots), 1, valid, want_lse)
        if sel.wants_mass:
            sel.attended(layer, chosen, self.ws.unit_mass(st, layer, q, scaling, slots.shape[1], 1))
        return out

    def _with_rest(self, layer, q, scaling, chosen, out, lse):
        """The selected part (out [B, 1, H, D], its lse) merged with the rest's: every body token
        the row did not select (chosen [R, k]: its units, -1 = none), at low precision."""
        st, sel = self.store, self.selector
        c, m = st.layout.chunk, st.n_chunks(layer)
        r = chosen.shape[0]
        held = self._read[layer]  # the mask of a kept selection (the same tensor) over the same body
        if held is not None and held[0] is chosen and held[1] == m:
            read = held[2]
        else:
            units = m * c if sel.tokens else m
            read = torch.zeros(r, units + 1, dtype=torch.bool, device=chosen.device)
            read.scatter_(1, chosen.masked_fill(chosen < 0, units), True)  # -1: the spare last column
            read = read[:, :units] if sel.tokens else read[:, :units].repeat_interleave(c, dim=1)
            self._read[layer] = (chosen, m, read)
        b, _, h, d = out.shape
        o_rest, lse_rest = sel.rest.attend(layer, q[:, :, 0].reshape(r, h * b // r, d), scaling, read)
        o, _ = merge_partials(out.reshape(r, -1, d).float(), lse.reshape(r, -1).float(), o_rest, lse_rest)
        return o.reshape(b, 1, h, d).to(out.dtype)

    def _gathered(self, layer, q, scaling, chosen, select, chunks, valid, want_lse=False):
        """The working set's step: the units gathered once per selection (`chosen`, the selector's
        tensor, names it), one SDPA a step (want_lse: (out, lse))."""
        st, sel = self.store, self.selector
        if sel.tokens:
            c = st.layout.chunk
            unit = 1

            def gather():  # [2, R, k, D]
                return st.pool.gather_tokens(st.lookup(layer, chunks), select - chunks * c)
        else:
            unit = st.layout.chunk

            def gather():  # [2, R, k, C*D]
                return st.pool.gather_rows(st.lookup(layer, select))

        out = self.ws.attend(st, layer, q, scaling, chosen, gather, unit, valid, want_lse)
        if sel.wants_mass:
            sel.attended(layer, select, self.ws.unit_mass(st, layer, q, scaling, select.shape[1], unit))
        return out

    def _kernel(self, layer, q, scaling, select, want_lse=False):
        """CUDA: the Triton kernel over the block table (no copy of KV); want_lse: (out, lse)."""
        st, sel = self.store, self.selector
        lay = st.layout
        b, h, _, d = q.shape
        args = kernel_args(st, layer, q, select)
        out, lse = sparse_decode_attention(*args, scaling)
        k = select.shape[1]
        if sel.wants_mass and k:
            slots = args[3].view(lay.rows, k)  # [R, k] global pool slots
            keys = st.pool.gather_rows(slots, parts=1)[0].reshape(lay.rows, k * lay.chunk, d)
            g = h // st.n_kv_heads
            s = torch.matmul(q[:, :, 0].reshape(lay.rows, g, d).float(), keys.float().transpose(-1, -2)) * scaling
            chunk_lse = torch.logsumexp(s.view(lay.rows, g, k, lay.chunk), dim=-1)  # [R, g, k]
            sel.attended(layer, select, torch.exp(chunk_lse - lse.view(lay.rows, g, 1)).sum(1))
        return (out.view(b, 1, h, d), lse) if want_lse else out.view(b, 1, h, d)


def kernel_args(store, layer: int, q: torch.Tensor, select: torch.Tensor) -> tuple:
    """What the sparse kernel reads for `layer`'s chunk selection `select` [R, k] (resident chunks):
    (q [B, H, D], k_pool, v_pool, block table [B, Hkv, k] of global slots, body_len, sinks + window
    keys and values [B, Hkv, E, D] from the edge buffer, extra_len) — views of the store's own
    buffers, read through its public view; the softmax scale goes last."""
    lay = store.layout
    b, _, _, d = q.shape
    hkv, k = store.n_kv_heads, select.shape[1]
    slots = store.lookup(layer, select)  # [R, k] global pool slots
    body_len = torch.full((b, hkv), k * lay.chunk, dtype=torch.int32, device=q.device)
    if k == 0:  # a zero-width block table: give the kernel one (masked) entry
        slots = torch.zeros(lay.rows, 1, dtype=torch.long, device=q.device)
    pool = store.pool
    return (q[:, :, 0], pool.k_pool, pool.v_pool, slots.view(b, hkv, -1), body_len,
            *_edges(store, layer, b, d, q.device))  # fmt: skip


def token_kernel_args(store, layer: int, q: torch.Tensor, select: torch.Tensor, valid, pools=None) -> tuple:
    """What the token-gather kernel reads for `layer`'s token selection `select` [R, k] (body
    positions in resident chunks; valid [R, k] bool or None: a row's valid ids come first): (q
    [B, H, D], k_pool, v_pool, the layer's chunk -> slot map, the ids, each row's count, sinks +
    window keys and values, extra_len) — views of the store's buffers; the softmax scale goes last.
    pools: (k_pool, v_pool, slot map) read instead of the chunk pool's (`TokenCache.pool_views`,
    with select its slots)."""
    rows, k = select.shape
    if valid is None:
        row_len = torch.full((rows,), k, dtype=torch.int32, device=q.device)
    else:
        row_len = valid.sum(1, dtype=torch.int32)
    if pools is None:
        pools = (store.pool.k_pool, store.pool.v_pool, store.chunk_slots(layer))
    b, _, _, d = q.shape
    return (q[:, :, 0], *pools, select, row_len, *_edges(store, layer, b, d, q.device))


def _edges(store, layer: int, b: int, d: int, device) -> tuple:
    """Sinks + window of `layer` as the kernels read them: keys, values [B, Hkv, E, D], extra_len [B]."""
    lay = store.layout
    n = store.layer_len(layer)
    ext = lay.sink_len(n) + lay.window_len(n)  # a layer with body chunks has all its sinks
    e = store.edge(layer)[:, :, :ext].view(2, b, store.n_kv_heads, ext, d)
    return e[0], e[1], torch.full((b,), ext, dtype=torch.int32, device=device)
