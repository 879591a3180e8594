"""`HostPool`: the middle tier — chunk slots in (pinned, when CUDA exists) host memory.

Slots are numbered 0..capacity-1; the TierManager decides which slot holds which chunk. Memory is
allocated lazily in arenas of `arena_slots` slots ([A, 2, R, C, D] each), so a store for a short
document does not pin gigabytes up front, and pinning (slow: page-locking) happens at most once
per arena — during prefill, or once per A window chunks in decode.

Pinned memory is what lets host->device copies run asynchronously at full PCIe speed; on a CPU-only
machine it does not exist and plain memory is used.
"""

from __future__ import annotations

import psutil
import torch

from .layout import ChunkLayout

__all__ = ["HostPool", "default_host_capacity", "HOST_FRACTION"]

HOST_FRACTION = 0.5  # of *available* host memory, when no host_mem is given: leave room for the rest


def default_host_capacity(chunk_bytes: int, fraction: float = HOST_FRACTION) -> int:
    """Chunks that fit in `fraction` of the host memory available now."""
    return int(psutil.virtual_memory().available * fraction) // chunk_bytes


class HostPool:
    """`capacity` chunk slots of the layout's shape, pinned when `pin` (needs CUDA)."""

    def __init__(self, layout: ChunkLayout, capacity: int, pin: bool, arena_bytes: int = 64 << 20):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.layout = layout
        self.capacity = capacity
        self.pin = pin
        self.arena_slots = max(1, arena_bytes // layout.chunk_bytes)
        self._arenas: list[torch.Tensor] = []  # each [A, 2, R, C, D]

    def view(self, slot: int) -> torch.Tensor:
        """Slot `slot` as a [2, R, C, D] tensor (allocating its arena on first use)."""
        if not 0 <= slot < self.capacity:
            raise IndexError(f"host slot {slot} out of range [0, {self.capacity})")
        arena, i = divmod(slot, self.arena_slots)
        while len(self._arenas) <= arena:
            # the last arena is cut to capacity: never allocate past host_mem
            size = min(self.arena_slots, self.capacity - len(self._arenas) * self.arena_slots)
            shape = (size, *self.layout.chunk_shape)
            self._arenas.append(torch.empty(shape, dtype=self.layout.dtype, pin_memory=self.pin))
        return self._arenas[arena][i]

    def span(self, slot: int, n: int) -> torch.Tensor:
        """Slots slot .. slot+n-1 as one [n, 2, R, C, D] view; they must share an arena (slots
        a*arena_slots .. (a+1)*arena_slots - 1): the store cuts its runs there."""
        first = self.view(slot)  # checks the range, allocates the arena
        if n > 1 and (slot // self.arena_slots != (slot + n - 1) // self.arena_slots or slot + n > self.capacity):
            raise IndexError(f"host slots {slot}..{slot + n - 1} are not in one arena")
        arena, i = divmod(slot, self.arena_slots)
        return self._arenas[arena][i : i + n] if n > 1 else first[None]

    def read_tokens(self, slots: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """k, v of single tokens: out[t, i] = view(slots[i])[t, rows[i], offsets[i]]; all long [n] on
        the CPU -> [2, n, D] on the CPU (pinned with the pool: its copy to the device need not wait):
        one index_select per arena the slots fall in."""
        lay = self.layout
        n = slots.shape[0]
        out = torch.empty(2, n, lay.head_dim, dtype=lay.dtype, pin_memory=self.pin)
        if n == 0:
            return out
        if int(slots.min()) < 0 or int(slots.max()) >= self.capacity:
            raise IndexError(f"host slots outside [0, {self.capacity})")
        arena, local = slots // self.arena_slots, slots % self.arena_slots
        for a in torch.unique(arena).tolist():
            self.view(a * self.arena_slots)  # allocated (a slot never written reads as garbage, never past it)
            at = (arena == a).nonzero().flatten()
            base = (local.index_select(0, at) * 2 * lay.rows + rows.index_select(0, at)) * lay.chunk
            flat = base + offsets.index_select(0, at)
            src = self._arenas[a].view(-1, lay.head_dim)
            out[0].index_copy_(0, at, src.index_select(0, flat))
            out[1].index_copy_(0, at, src.index_select(0, flat + lay.rows * lay.chunk))
        return out

    @property
    def nbytes_allocated(self) -> int:
        """Host memory held by the pool (allocated arenas, used or not)."""
        return sum(a.numel() * a.element_size() for a in self._arenas)

    def close(self) -> None:
        self._arenas = []
