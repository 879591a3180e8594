"""`Lookahead`: a layer's token-cache misses fetched while the layer below still runs.

Before layer l-1 runs, the engine hands over the query layer l would compute from layer l-1's input
(`offload.next_query`; InfiniGen's observation: the residual stream moves little per layer). When
layer l-1 has attended, layer l's selector picks with that query (`Selector.predict`: nothing
recorded), the store admits the guessed rows its token cache lacks (at most the slots beyond what
the layer's last step read: a guess never evicts that step's rows) and one worker thread reads them
from the tiers and writes them — on the copy stream on CUDA — while the compute thread runs the
rest of layer l-1 (o_proj, MLP) and layer l's projections (on a CPU the fetch runs inline: a second
thread's torch ops would share the cores with the compute thread's, which on 2 cores cost 2.4x a
step; bench/results/lookahead/). Before layer l's KV changes or is read
(the store's next call on it) the fetch is waited for (`settle`): the guess's rows are then plain
cache rows, so a step reads exactly what it would without the lookahead; what the guess missed
is fetched on demand as before. bench/lookahead.py measures how much of a step's fetch it names.

Counters: `token_ahead` (rows fetched ahead) and `token_ahead_hits` (of those, rows a step then
read) are the cache's; `ahead_wait_s` is the compute thread's wait here.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["Lookahead"]


class Lookahead:
    """The lookahead fetch of one store's token cache; counters: the decode step's dict; threaded:
    the fetch runs on a worker thread (default: on CUDA) or inline."""

    def __init__(self, store, selector, counters: dict, threaded: bool | None = None):
        self.store, self.selector, self.counters = store, selector, counters
        self.threaded = store.device.type == "cuda" if threaded is None else threaded
        self._pending: tuple | None = None  # (layer, q [B, H, 1, D], scaling): the guess's query
        self._inflight: tuple | None = None  # (layer, slots, future)
        self._pool: ThreadPoolExecutor | None = None  # one worker, made at the first fetch

    def note(self, layer: int, q: torch.Tensor, scaling: float) -> None:
        """The query `layer` is expected to ask, known before the layer below runs."""
        self._pending = (layer, q, scaling)

    def run(self, after: int) -> None:
        """Layer `after` has attended: start the fetch of layer after + 1's guessed rows."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != after + 1:
            return  # (the fetch before was waited for when layer `after` attended)
        layer, q, scaling = pending
        st = self.store
        n_tokens = st.layer_len(layer) + 1  # what the layer will hold once this step's token is in
        guess = self.selector.predict(layer, q[:, :, 0].contiguous(), st.n_chunks(layer), n_tokens, scaling)
        got = None if guess is None else st.fetch_ahead(layer, guess)
        if got is None:
            return
        slots, fill = got
        if not self.threaded:
            self._wait(layer, slots, fill)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offload-lookahead")
        self._inflight = (layer, slots, self._pool.submit(fill))

    def settle(self) -> None:
        """Wait for the fetch in flight; its rows are then readable. A failed fetch (a corrupt disk
        record) leaves its slots empty and raises here."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        layer, slots, future = inflight
        t0 = time.perf_counter()
        try:
            self._wait(layer, slots, future.result)
        finally:
            self.counters["ahead_wait_s"] += time.perf_counter() - t0
        self.store.ready(layer)

    def _wait(self, layer: int, slots: torch.Tensor, done) -> None:
        """done(): the fill, or its end; a failure leaves the admitted slots empty and is raised."""
        try:
            done()
        except BaseException:
            self.store.token_cache.drop(layer, slots)
            raise

    def close(self) -> None:
        """Wait for the fetch in flight and stop the worker (idempotent)."""
        try:
            self.settle()
        except Exception:  # noqa: S110 - rows no step will read: the store is going away
            pass
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
