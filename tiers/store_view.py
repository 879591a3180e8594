"""`StoreView`: the public view of a `TieredKVStore` that attention reads (decode_attention.py,
rounds.py, working_set.py): chunk counts and residency, the sinks + window buffer, the GPU pool,
the block-table lookup, and pinning chunks for one attention call. A mixin of the store (it reads
the store's own manager, pools, edges and transfer engine); nothing outside the store needs them.
"""

from __future__ import annotations

import torch

from .manager import HOST
from .token_cache import KEY
from .token_fetch import read_rows

__all__ = ["StoreView"]


class StoreView:
    """Methods of `TieredKVStore` (see the module doc)."""

    def n_chunks(self, layer: int) -> int:
        """Body chunks of `layer`."""
        return self._mgr.n_chunks(layer)

    def slot_budget(self, layer: int) -> int:
        """GPU slots of `layer`: the most chunks one attention round can hold."""
        return self._mgr.budgets[layer]

    def all_resident(self, layer: int) -> bool:
        """Every body chunk of `layer` has a GPU copy."""
        return self._mgr.all_resident(layer)

    def is_resident(self, layer: int, j: int) -> bool:
        return self._mgr.gpu_slot(layer, j) is not None

    def version(self, layer: int) -> int:
        """Moves whenever `layer`'s resident chunks change (added, evicted, truncated)."""
        return self._mgr.version(layer)

    @property
    def pool(self):
        """The GPU pool (`GpuPool`: k_pool / v_pool views, gathers by global slot)."""
        return self._gpu

    def edge(self, layer: int) -> torch.Tensor:
        """`layer`'s sinks + window buffer, [2, R, S + W + C, D]: sinks at [:S], the window at
        [S : S + window_len]; a layer with body chunks has all S sinks, so [:S + w] is contiguous."""
        return self._edge[layer]

    def lookup(self, layer: int, ids: torch.Tensor) -> torch.Tensor:
        """Global pool slots [R, k] of resident chunk ids [R, k] (long, on the device), through the
        block table: no host sync. Copies into the layer's slots are waited for."""
        self._xfer.ready(layer)
        return self._table.slots(layer, self._mgr, ids)

    def chunk_slots(self, layer: int) -> torch.Tensor:
        """The layer's chunk -> global pool slot map [>= n_chunks] (long, on the device; -1 = no GPU
        copy) through the block table: what the token-gather kernel reads. Copies are waited for."""
        self._xfer.ready(layer)
        return self._table.row(layer, self._mgr)

    def pin(self, layer: int, chunks: list[int]) -> torch.Tensor:
        """Make `chunks` resident and pinned until `done`; their global slots, int64 [n]."""
        seen, plan = self._mgr.version(layer), self._mgr.acquire(layer, chunks)
        if plan.misses:
            self._xfer.begin(layer)
            if self._disk is not None:  # every disk miss's read goes out at once
                self._disk.will_need(layer, [m.chunk for m in plan.misses if m.home != HOST])
            try:
                for miss in plan.misses:
                    dst = self._gpu.view(layer, miss.slot)
                    if miss.home == HOST:
                        self._xfer.upload(self._host.view(miss.host_slot), dst)
                    else:
                        self._xfer.upload_from(lambda buf, c=miss.chunk: self._disk.read_into(layer, c, buf), dst)
            except BaseException:  # a corrupt disk chunk (or Ctrl-C): unfilled slots must not count as copies
                self._mgr.abort(layer, plan)
                raise
        self._xfer.ready(layer)
        self._table.patch(layer, seen, self._mgr, plan)  # the misses and evictions only: no rebuild
        return torch.tensor([self._gpu.base[layer] + s for s in plan.slots], dtype=torch.long, device=self.device)

    @property
    def token_cache(self):
        """The `TokenCache` holding token selections' rows on the GPU, or None (chunk slots do)."""
        return self._tokens

    def resident_tokens(self, layer: int, select: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
        """Token-cache slots long [R, k] of `layer`'s body positions select [R, k] (valid [R, k]: a
        row's real picks, first; the others stand in for its first and get its slot), the misses read
        from the tiers; None when the cache cannot hold the step's picks. Host syncs: the counts of
        picks and misses (one), the missed ids (when there are misses)."""
        cache, n_body = self._tokens, self._mgr.n_chunks(layer) * self.layout.chunk
        keys = cache.keys(select)
        slot, hit = cache.lookup(layer, keys, n_body)
        miss = ~hit if valid is None else ~hit & valid
        n_valid = torch.tensor(select.numel(), device=select.device) if valid is None else valid.sum()
        n_miss, n_valid = torch.stack([miss.sum(), n_valid]).tolist()  # the one wait for the device
        epoch = cache.epoch(layer)
        if not cache.fit(layer, n_valid):
            return None
        if cache.epoch(layer) != epoch:  # split anew (rows forgotten): look again
            slot, hit = cache.lookup(layer, keys, n_body)
            miss = ~hit if valid is None else ~hit & valid
            n_miss = n_valid
        cache.note_hits(n_valid - n_miss)
        if n_miss:
            new = cache.admit(layer, keys, miss, n_miss)
            missed = keys.reshape(-1)[miss.reshape(-1)].cpu()
            rows = read_rows(layer, missed // KEY, missed % KEY, mgr=self._mgr, gpu=self._gpu, host=self._host,
                             disk=self._disk, device=self.device)  # fmt: skip
            cache.write(new, rows)
            rank = (miss.reshape(-1).cumsum(0) - 1).clamp_(min=0)
            slot = torch.where(miss.reshape(-1), new.index_select(0, rank), slot.reshape(-1)).view(select.shape)
        return slot if valid is None else torch.where(valid, slot, slot[:, :1])

    def fetch_ahead(self, layer: int, guess: torch.Tensor):
        """Admit to the token cache the rows of `layer`'s guessed picks guess long [R, k] (-1: none)
        it does not hold, at most its `room`: (the slots long [n], the work that fills them — for
        another thread: reads the tiers, writes the cache on the copy stream; `ready(layer)` before
        a read), or None when none is missing. The guess's held rows count as read now. One host
        wait (the missed ids)."""
        cache, n_body = self._tokens, self._mgr.n_chunks(layer) * self.layout.chunk
        room = cache.room(layer)
        if room <= 0:
            return None
        keys = cache.keys(guess.clamp(min=0))
        _, hit = cache.lookup(layer, keys, n_body, guess=True)
        miss = ~hit & (guess >= 0)
        miss &= miss.reshape(-1).cumsum(0).view_as(miss) <= room  # the first `room` in row-major order
        missed = keys.reshape(-1)[miss.reshape(-1)].cpu()  # the wait
        if missed.numel() == 0:
            return None
        new = cache.admit(layer, keys, miss, missed.numel(), ahead=True)
        side = self._xfer.side(layer)

        def fill():
            with torch.inference_mode(), side:
                if new.is_cuda:
                    new.record_stream(torch.cuda.current_stream(new.device))
                rows = read_rows(layer, missed // KEY, missed % KEY, mgr=self._mgr, gpu=self._gpu, host=self._host,
                                 disk=self._disk, device=self.device)  # fmt: skip
                cache.write(new, rows)

        return new, fill

    def ready(self, layer: int) -> None:
        """Copies into `layer`'s slots and cache rows issued so far come before its next reads."""
        self._xfer.ready(layer)

    def done(self, layer: int, pinned: bool, hits: int = 0) -> None:
        """An attention call over `layer` finished: its slots may be overwritten again; pinned
        chunks are released; hits: (row, unit) reads to count when nothing had to be fetched."""
        self._xfer.mark_used(layer)
        if pinned:
            self._mgr.release(layer)
        elif hits:
            self._mgr.note_hits(hits)
