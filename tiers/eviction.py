"""`LRU`: which resident chunk of one layer's GPU hot set gives its slot to a miss.

Pure Python over chunk ids. The TierManager calls `insert` (a chunk became resident), `touch` (a
resident chunk was used) and `remove` (it left: evicted or truncated), and asks `victim(pinned)`: the
chunk to evict, never one in `pinned` (chunks the current attention step is using).

LRU is the only eviction rule: `python bench/tier_choices.py eviction` replays oracle decode selections
and compares its hit rate with Belady's offline optimum. FIFO, CLOCK, LFU and evicting the
lowest-scoring chunk were none enough better to keep, so they were removed (issue 21); that
comparison is summarised in this file's docstring at commit 92ae404.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["LRU"]


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
        raise LookupError("every resident chunk is pinned: nothing can be evicted")
