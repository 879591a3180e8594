"""`TierManager`: placement — where every chunk lives, per-layer GPU budgets, eviction, fetch plans.

Pure Python over integer ids (layer, chunk j, slot numbers); no tensors, so every decision is unit
tested without CUDA. The store asks, then moves bytes with the pools and `transfer`.

Placement rules:
- every chunk has one *home*, fixed when it is added: the host pool while it has a free slot, else
  the disk store. The home copy is never dropped (chunks are immutable), so evicting a GPU copy is
  free. Homes do not migrate between host and disk: under full attention every step scans the whole
  layer, and a static split is the scan-optimal choice (any promotion would evict a chunk needed in
  the same scan); sparse selection may later promote hot disk chunks.
- the GPU pool is a cache over the homes: layer l holds at most `budgets[l]` chunks. A chunk added
  during prefill takes a GPU slot only if one is free (prefill must not churn the hot set); one added
  by decode (`hot=True`, it just left the window and will be attended next step) may evict.
- `acquire(layer, chunks)` makes the chunks resident: hits are touched, misses get a free or evicted
  slot and are returned for the mechanism to fill. Acquired chunks are *pinned* until `release`, so a
  step never evicts what it is about to read. Sinks and window are not chunks: never evictable.
"""

from __future__ import annotations

from dataclasses import dataclass

from .eviction import LRU

__all__ = ["TierManager", "Placement", "Miss", "FetchPlan", "HOST", "DISK", "slot_runs"]

HOST, DISK = "host", "disk"


@dataclass(frozen=True)
class Placement:
    """Where chunk `chunk` of `layer` lives: its home (host slot or disk) and its GPU slot, if any."""

    layer: int
    chunk: int
    home: str
    host_slot: int | None
    gpu_slot: int | None


@dataclass(frozen=True)
class Miss:
    """A chunk to copy from its home into GPU slot `slot` of the plan's layer."""

    chunk: int
    slot: int
    home: str
    host_slot: int | None


@dataclass(frozen=True)
class FetchPlan:
    """Result of `acquire`: slots[i] is the layer-local GPU slot of chunks[i] once `misses` are
    copied; `evicted` chunks lost their GPU copy to make room."""

    layer: int
    chunks: tuple[int, ...]
    slots: tuple[int, ...]
    misses: tuple[Miss, ...]
    evicted: tuple[int, ...]


class TierManager:
    """Placement and eviction for `len(budgets)` layers.

    budgets: GPU slots per layer (>= 1 each); host_capacity: chunks the host pool holds. GPU copies
    are evicted least recently used first (`eviction.LRU`).
    """

    def __init__(self, budgets: list[int], host_capacity: int):
        if any(b < 1 for b in budgets):
            raise ValueError(f"every layer needs a budget >= 1, got {budgets}")
        self.budgets = list(budgets)
        self.host_capacity = host_capacity
        n = len(budgets)
        self._home: list[list[str]] = [[] for _ in range(n)]
        self._host_slot: list[list[int | None]] = [[] for _ in range(n)]
        self._gpu: list[dict[int, int]] = [{} for _ in range(n)]  # chunk -> layer-local slot
        self._free_gpu = [list(range(b - 1, -1, -1)) for b in budgets]  # pop() gives slot 0 first
        self._free_host: list[int] = []
        self._host_next = 0  # host slots never used yet: [_host_next, host_capacity)
        self._lru = [LRU() for _ in range(n)]
        self._pinned: list[set[int]] = [set() for _ in range(n)]
        # bumped whenever a layer's chunk -> GPU slot map changes: device mirrors of the map (the
        # store's block table) rebuild a layer's row only when its version moved
        self._version = [0] * n
        self.counters = dict.fromkeys(
            ("hits", "misses", "misses_host", "misses_disk", "evictions", "added_host", "added_disk"), 0)

    # -- queries ---------------------------------------------------------------------------------
    def n_chunks(self, layer: int) -> int:
        return len(self._home[layer])

    def placement(self, layer: int, chunk: int) -> Placement:
        self._check(layer, chunk)
        return Placement(layer, chunk, self._home[layer][chunk], self._host_slot[layer][chunk],
                         self._gpu[layer].get(chunk))  # fmt: skip

    def gpu_slot(self, layer: int, chunk: int) -> int | None:
        return self._gpu[layer].get(chunk)

    def homes(self, layer: int, chunks: list[int]) -> tuple[list[int], list[int]]:
        """For each of `chunks` (ids of `layer`): its host slot (-1: its home is the disk) and its
        layer-local GPU slot (-1: none) — `placement` for many at once, without a record each."""
        if chunks and not (0 <= min(chunks) and max(chunks) < len(self._home[layer])):
            for c in chunks:
                self._check(layer, c)
        home, host, gpu = self._home[layer], self._host_slot[layer], self._gpu[layer]
        return [host[c] if home[c] == HOST else -1 for c in chunks], [gpu.get(c, -1) for c in chunks]

    def resident(self, layer: int) -> dict[int, int]:
        """chunk -> slot of `layer`'s GPU-resident chunks (a copy)."""
        return dict(self._gpu[layer])

    def all_resident(self, layer: int) -> bool:
        """Every chunk of `layer` has a GPU copy (reading any of them needs no fetch)."""
        return len(self._gpu[layer]) == len(self._home[layer])

    def version(self, layer: int) -> int:
        """Changes whenever `layer`'s chunk -> GPU slot map changes."""
        return self._version[layer]

    def note_hits(self, n: int) -> None:
        """Count n chunk reads served from the GPU without `acquire` (the store's sparse step in a
        layer whose every chunk is resident)."""
        self.counters["hits"] += n

    @property
    def host_used(self) -> int:
        return self._host_next - len(self._free_host)

    @property
    def gpu_used(self) -> int:
        return sum(len(g) for g in self._gpu)

    @property
    def disk_chunks(self) -> int:
        return sum(h.count(DISK) for h in self._home)

    # -- placement -------------------------------------------------------------------------------
    def add_chunk(self, layer: int, hot: bool = False) -> Placement:
        """Register the next chunk of `layer`: choose its home and, if a slot is free (or `hot` and
        something is evictable), a GPU slot. The caller writes the bytes where this says."""
        chunk = len(self._home[layer])
        host_slot = self._alloc_host()
        home = HOST if host_slot is not None else DISK
        self._home[layer].append(home)
        self._host_slot[layer].append(host_slot)
        self.counters["added_host" if home == HOST else "added_disk"] += 1
        gpu_slot = None
        if self._free_gpu[layer] or hot:
            try:
                gpu_slot, _ = self._take_slot(layer, self._pinned[layer])
            except LookupError:  # everything pinned: stay cold
                gpu_slot = None
            else:
                self._gpu[layer][chunk] = gpu_slot
                self._lru[layer].insert(chunk)
                self._version[layer] += 1
        return Placement(layer, chunk, home, host_slot, gpu_slot)

    def acquire(self, layer: int, chunks) -> FetchPlan:
        """Make `chunks` (distinct ids of `layer`) resident and pin them until `release(layer)`.
        Raises ValueError when they cannot all fit in the layer's budget."""
        chunks = tuple(chunks)
        if chunks and not (0 <= min(chunks) and max(chunks) < len(self._home[layer])):
            for c in chunks:  # (one bounds test for all, the loop only to name the bad id)
                self._check(layer, c)
        wanted = set(chunks)
        if len(wanted) != len(chunks):
            raise ValueError("acquire: chunk ids must be distinct")
        pinned = self._pinned[layer] | wanted
        if len(pinned) > self.budgets[layer]:
            raise ValueError(f"layer {layer}: {len(pinned)} chunks requested/pinned, budget is "
                             f"{self.budgets[layer]} slots; split the request into rounds")  # fmt: skip
        gpu, lru = self._gpu[layer], self._lru[layer]
        touch, hits = lru.touch, 0  # a step's ~2,000 hits: the loop's Python is most of a fetch at 1M
        slots, misses, evicted = [], [], []
        for c in chunks:
            slot = gpu.get(c)
            if slot is not None:
                touch(c)
                hits += 1
            else:
                slot, victim = self._take_slot(layer, pinned)
                if victim is not None:
                    evicted.append(victim)
                gpu[c] = slot
                lru.insert(c)
                self._version[layer] += 1
                home = self._home[layer][c]
                misses.append(Miss(c, slot, home, self._host_slot[layer][c]))
                self.counters["misses"] += 1
                self.counters["misses_host" if home == HOST else "misses_disk"] += 1
            slots.append(slot)
        self.counters["hits"] += hits
        self._pinned[layer] = pinned
        return FetchPlan(layer, chunks, tuple(slots), tuple(misses), tuple(evicted))

    def release(self, layer: int) -> None:
        """Unpin what `acquire` pinned for `layer` (the step is done reading it)."""
        self._pinned[layer].clear()

    def abort(self, layer: int, plan: FetchPlan) -> None:
        """`plan`'s copies failed (a corrupt disk chunk, Ctrl-C): its misses' slots hold other bytes,
        so they go back to the free list instead of counting as copies; the layer's pins are released."""
        for miss in plan.misses:
            if self._gpu[layer].pop(miss.chunk, None) is not None:
                self._lru[layer].remove(miss.chunk)
                self._free_gpu[layer].append(miss.slot)
        self._version[layer] += 1
        self.release(layer)

    def truncate(self, layer: int, n_chunks: int) -> list[Placement]:
        """Forget chunks >= n_chunks of `layer`; free their slots. Returns what was freed."""
        freed = []
        for c in range(len(self._home[layer]) - 1, n_chunks - 1, -1):
            p = self.placement(layer, c)
            freed.append(p)
            if p.gpu_slot is not None:
                del self._gpu[layer][c]
                self._lru[layer].remove(c)
                self._version[layer] += 1
                self._free_gpu[layer].append(p.gpu_slot)
            if p.host_slot is not None:
                self._free_host.append(p.host_slot)
            self._pinned[layer].discard(c)
        del self._home[layer][n_chunks:]
        del self._host_slot[layer][n_chunks:]
        return freed

    # -- internals -------------------------------------------------------------------------------
    def _check(self, layer: int, chunk: int) -> None:
        if not 0 <= chunk < len(self._home[layer]):
            raise IndexError(f"layer {layer} has no chunk {chunk} ({len(self._home[layer])} chunks)")

    def _alloc_host(self) -> int | None:
        if self._free_host:
            return self._free_host.pop()
        if self._host_next < self.host_capacity:
            self._host_next += 1
            return self._host_next - 1
        return None

    def _take_slot(self, layer: int, pinned: set[int]) -> tuple[int, int | None]:
        """A free slot of `layer`, evicting the least recently used unpinned chunk when none is free."""
        if self._free_gpu[layer]:
            return self._free_gpu[layer].pop(), None
        victim = self._lru[layer].victim(pinned)
        self._lru[layer].remove(victim)
        slot = self._gpu[layer].pop(victim)
        self.counters["evictions"] += 1
        return slot, victim


def slot_runs(slots: list, cut: int | None = None):
    """(a, b) index ranges of `slots` holding consecutive ints (None: no slot, skipped); a run also
    ends where a slot is a multiple of `cut` (host arenas). Equal neighbours are separate runs: a
    later chunk that took an earlier one's slot is copied after it."""
    a = 0
    while a < len(slots):
        if slots[a] is None:
            a += 1
            continue
        b = a + 1
        while b < len(slots) and slots[b] == slots[b - 1] + 1 and not (cut and slots[b] % cut == 0):
            b += 1
        yield a, b
        a = b
