"""Conversations kept in memory: a few KV stores, each with the token ids whose KV it holds, reused
for any request that extends (or shares a long prefix with) what one already processed.

A request renders to token ids; the slot sharing the longest prefix with them is rewound to that
prefix and only the rest is prefilled, so a follow-up question over a 200k-token document costs its
own few tokens, not the document. Slots are kept least-recently-used first and bounded twice: by
count, and by the tokens they hold together (the memory plan budgets one context of KV)."""

from __future__ import annotations

from typing import Iterator

from offload.engine import Engine
from offload.generate import GenerationResponse, run_generation

__all__ = ["Slot", "SlotPool", "common_prefix", "Cancelled"]

REUSE_DROP = 512  # a slot is rewound for a request when it drops at most this (or what it keeps)


class Cancelled(Exception):
    """Raised inside a generation (from the prefill progress hook) when its client went away."""


def common_prefix(a, b) -> int:
    """Length of the common prefix of two token sequences (a block compare first: 200k ids in ~1 ms)."""
    n, i, step = min(len(a), len(b)), 0, 4096
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Slot:
    """One sequence's KV store and `tokens`, the ids whose KV it holds, in order (len == store length
    between requests). `saved`: tokens of that prefix known to be in the disk cache."""

    def __init__(self, model, store=None, tokens=(), saved: int = 0):
        self.store = store if store is not None else model.new_store()
        self.engine = Engine(model, self.store)
        self.tokens, self.saved = list(tokens), saved

    def generate(self, ids: list[int], *, max_new_tokens: int, sampling, stop,
                 cancelled) -> Iterator[GenerationResponse]:
        """Rewind to the longest prefix shared with `ids`, prefill the rest, stream the answer.

        cancelled: a threading.Event checked after every prefilled layer (a long prefill stops early).
        Closing the iterator at any point leaves the slot consistent: the store holds exactly `tokens`
        (a half-processed tail is dropped), never KV that no token list describes."""
        keep = min(common_prefix(self.tokens, ids), len(ids) - 1)  # prefill needs >= 1 token
        keep = self.engine.truncate(keep)  # fewer when the store cannot rewind that far
        del self.tokens[keep:]
        self.saved = min(self.saved, keep)
        new = ids[keep:]

        def progress(done, total, n):
            if cancelled.is_set():
                raise Cancelled()

        steps = None
        try:
            first = True
            steps = run_generation(self.engine, new, max_new_tokens=max_new_tokens, sampling=sampling,
                                   stop=list(stop) or None, on_decoded=self.tokens.append, progress=progress)
            for r in steps:
                if first:  # the prompt is in the store now
                    self.tokens[keep:keep] = new
                    first = False
                yield r
        finally:
            if steps is not None:
                steps.close()
            lens = [self.store.layer_len(i) for i in range(self.store.n_layers)]
            n = min(lens + [len(self.tokens)])
            if n != len(self.tokens) or any(m != n for m in lens):
                # interrupted inside prefill or decode: the tail is unknown, drop it
                n = self.engine.truncate(n)
                del self.tokens[n:]

    def close(self) -> None:
        self.store.close()


class SlotPool:
    """At most `n_slots` slots holding at most `max_tokens` tokens together, least recent first."""

    def __init__(self, model, n_slots: int, max_tokens: int):
        self.model, self.n_slots, self.max_tokens = model, n_slots, max_tokens
        self._slots: list[Slot] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._slots)

    def best(self, ids) -> tuple[Slot | None, int]:
        """The slot sharing the longest prefix with `ids`, and that length."""
        found, n = None, 0
        for slot in self._slots:
            m = common_prefix(slot.tokens, ids)
            if m > n:
                found, n = slot, m
        return found, n

    def take(self, ids, need: int, loaded: tuple | None = None) -> Slot:
        """The slot to run `ids` on (it becomes the most recent). loaded: (store, tokens) read from the
        disk cache, used as a new slot. Otherwise the slot sharing the longest prefix is rewound and
        reused when that drops no more than it keeps (or a short tail, e.g. the last answer); a
        different document gets a slot of its own rather than destroying one a later request may
        want. need: tokens the request may reach (prompt + max_tokens); least recent slots are closed
        until the rest leave room for it."""
        slot = None
        if loaded is None:
            best, n = self.best(ids)
            if best is not None and n > 0 and len(best.tokens) - n <= max(n, REUSE_DROP):
                slot = best
        if slot is None:
            store, tokens = loaded if loaded is not None else (None, ())
            slot = Slot(self.model, store, tokens, saved=len(tokens))
        else:
            self._slots.remove(slot)
        while self._slots and (len(self._slots) + 1 > self.n_slots
                               or sum(len(s.tokens) for s in self._slots) + need > self.max_tokens):
            self._slots.pop(0).close()
        self._slots.append(slot)
        return slot

    def drop(self, slot: Slot) -> None:
        """Forget `slot` (its store is in an unknown state after an internal error)."""
        if slot in self._slots:
            self._slots.remove(slot)
        slot.close()

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots.clear()
