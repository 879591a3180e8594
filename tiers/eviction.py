"""Eviction policies for one layer's GPU hot set: which resident chunk gives its slot to a miss.

Pure Python over chunk ids. Each policy sees `insert` (a chunk became resident), `touch` (a resident
chunk was used), `remove` (it left: evicted or truncated) and answers `victim(pinned)`: the chunk to
evict, never one in `pinned` (chunks the current attention step is using).

The default, LRU, was chosen by replaying real decode traces (`python bench/tiers.py eviction`:
SmolLM2, 4k tokens of prose, 256 teacher-forced steps, oracle top-k chunks per KV head, 30 layers).
Hit rates with the pool at 1-3x the per-step selection: LRU 0.73-0.97, CLOCK and LFU within 0.01 of
it, FIFO 0.01-0.04 lower, Belady's offline optimum 0.01-0.06 higher; evicting the lowest-scoring
chunk (what abstract scores would allow) gained < 0.01 — not worth coupling policy to scoring.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

__all__ = ["EvictionPolicy", "LRU", "FIFO", "Clock", "LFU", "POLICIES", "DEFAULT_POLICY", "make_policy"]


class EvictionPolicy(Protocol):
    def insert(self, key: int) -> None: ...
    def touch(self, key: int) -> None: ...
    def remove(self, key: int) -> None: ...
    def victim(self, pinned: set[int]) -> int: ...


def _none_left() -> LookupError:
    return LookupError("every resident chunk is pinned: nothing can be evicted")


class LRU:
    """Least recently used: evict the chunk whose last use is oldest."""

    def __init__(self):
        self._order: OrderedDict[int, None] = OrderedDict()  # oldest first

    def insert(self, key: int) -> None:
        self._order[key] = None

    def touch(self, key: int) -> None:
        self._order.move_to_end(key)

    def remove(self, key: int) -> None:
        self._order.pop(key, None)

    def victim(self, pinned: set[int]) -> int:
        for key in self._order:
            if key not in pinned:
                return key
        raise _none_left()


class FIFO(LRU):
    """First in, first out: uses do not refresh a chunk."""

    def touch(self, key: int) -> None:
        pass


class Clock:
    """Second chance: a use sets a bit; the hand clears set bits and evicts the first clear one."""

    def __init__(self):
        self._ring: list[int] = []
        self._bit: dict[int, bool] = {}
        self._hand = 0

    def insert(self, key: int) -> None:
        self._ring.append(key)
        self._bit[key] = False

    def touch(self, key: int) -> None:
        self._bit[key] = True

    def remove(self, key: int) -> None:
        if key in self._bit:
            i = self._ring.index(key)
            del self._ring[i]
            del self._bit[key]
            if i < self._hand:
                self._hand -= 1
            if self._hand >= len(self._ring):
                self._hand = 0

    def victim(self, pinned: set[int]) -> int:
        for _ in range(2 * len(self._ring) + 1):
            if not self._ring:
                break
            self._hand %= len(self._ring)
            key = self._ring[self._hand]
            if key not in pinned and not self._bit[key]:
                return key
            self._bit[key] = False
            self._hand += 1
        raise _none_left()


class LFU:
    """Least frequently used with aging: counts halve every `half_life` uses, so a chunk that was
    hot long ago does not squat a slot forever. Ties go to the least recently used."""

    def __init__(self, half_life: int = 4096):
        self._count: dict[int, float] = {}
        self._last: dict[int, int] = {}
        self._clock = 0
        self._half_life = half_life

    def insert(self, key: int) -> None:
        self._count[key] = 1.0
        self._tick(key)

    def touch(self, key: int) -> None:
        self._count[key] += 1.0
        self._tick(key)

    def _tick(self, key: int) -> None:
        self._clock += 1
        self._last[key] = self._clock
        if self._clock % self._half_life == 0:
            for k in self._count:
                self._count[k] *= 0.5

    def remove(self, key: int) -> None:
        self._count.pop(key, None)
        self._last.pop(key, None)

    def victim(self, pinned: set[int]) -> int:
        candidates = [k for k in self._count if k not in pinned]
        if not candidates:
            raise _none_left()
        return min(candidates, key=lambda k: (self._count[k], self._last[k]))


POLICIES = {"lru": LRU, "fifo": FIFO, "clock": Clock, "lfu": LFU}
DEFAULT_POLICY = "lru"


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy by name (one of POLICIES)."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {sorted(POLICIES)}") from None
