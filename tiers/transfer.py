"""`Transfer`: the mechanism that moves chunk bytes between tiers.

CUDA: all host<->device chunk copies run on one side *copy stream* from pinned memory, so they
overlap compute and never block the host. Ordering is kept with events, not host syncs:
- `ready[l]`  recorded on the copy stream after copies into layer l's slots; the compute stream
  waits on it before attending layer l (`ready(l)`);
- `used[l]`   recorded on the compute stream after an attention read layer l's slots; the copy
  stream waits on it before overwriting them (`begin(l)`), so an evicted slot is never refilled
  while a kernel still reads it;
- disk reads decode on the CPU into a ring of pinned staging buffers; a buffer is refilled only after
  the event of its last upload has completed (the one host wait, and only on the disk path).
Device-to-host copies of new chunks (prefill) run on the copy stream after it waits for the compute
stream; `record_stream` keeps the source alive until the copy is done.

CPU: the "device" is host memory; every method is a plain synchronous `copy_`.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .layout import ChunkLayout

__all__ = ["Transfer"]


class Transfer:
    """Chunk copies for one store. n_staging: pinned buffers in the disk->device ring."""

    def __init__(self, device: torch.device | str, layout: ChunkLayout, n_staging: int = 4):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.layout = layout
        shape, dtype = layout.chunk_shape, layout.dtype
        self._staging = [torch.empty(shape, dtype=dtype, pin_memory=self.cuda)
                         for _ in range(n_staging if self.cuda else 1)]  # fmt: skip
        self._next = 0
        if self.cuda:
            self._stream = torch.cuda.Stream(device=self.device)
            n = layout.n_layers
            self._ready = [torch.cuda.Event() for _ in range(n)]
            self._used = [torch.cuda.Event() for _ in range(n)]
            self._staged = [torch.cuda.Event() for _ in self._staging]

    # -- new chunks: device -> tiers ------------------------------------------------------------
    def to_slot(self, chunk: torch.Tensor, dst: torch.Tensor) -> None:
        """Device->device: a new chunk [2, R, C, D] into a pool slot, on the compute stream, after
        any pending copy-stream write to pool slots (the slot may have been freed mid-flight)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        dst.copy_(chunk)

    def to_host(self, chunk: torch.Tensor, dst: torch.Tensor) -> None:
        """Device->host: a new chunk into its (pinned) host slot, asynchronously on CUDA."""
        if not self.cuda:
            dst.copy_(chunk)
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            dst.copy_(chunk, non_blocking=True)
        chunk.record_stream(self._stream)

    def to_cpu(self, chunk: torch.Tensor) -> torch.Tensor:
        """A new chunk as a contiguous CPU tensor, complete on return (for the disk writer). On CUDA
        it lands in a staging buffer: use it before the next call."""
        if not self.cuda:
            return chunk.contiguous()
        buf, event = self._take_staging()
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            buf.copy_(chunk, non_blocking=True)
        chunk.record_stream(self._stream)
        event.record(self._stream)
        event.synchronize()  # host wait: the disk write needs the bytes (prefill only)
        return buf

    # -- misses: tiers -> device slots -----------------------------------------------------------
    def begin(self, layer: int) -> None:
        """Before writing layer `layer`'s slots: wait until attention is done reading them."""
        if self.cuda:
            self._stream.wait_event(self._used[layer])

    def upload(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Host slot (pinned) -> device slot, asynchronously on CUDA. Call between begin and ready."""
        if not self.cuda:
            dst.copy_(src)
            return
        with torch.cuda.stream(self._stream):
            dst.copy_(src, non_blocking=True)

    def upload_from(self, fill: Callable[[torch.Tensor], None], dst: torch.Tensor) -> None:
        """`fill(buf)` writes a chunk into a contiguous CPU buffer (a disk read); the bytes then go to
        `dst` (a device slot or any device view). On CPU, a contiguous dst is filled in place."""
        if not self.cuda:
            if dst.is_contiguous():
                fill(dst)
            else:
                fill(self._staging[0])
                dst.copy_(self._staging[0])
            return
        buf, event = self._take_staging()
        fill(buf)
        with torch.cuda.stream(self._stream):
            dst.copy_(buf, non_blocking=True)
        event.record(self._stream)

    def side(self, layer: int):
        """For copies into layer `layer`'s slots issued from another thread (a lookahead's fetch):
        call here (the compute thread) first; the copy stream waits for the compute stream's work so
        far (the slots' ids) and for attention's last read of the layer. Returns the context the
        other thread copies in (the copy stream; nothing on CPU). `ready(layer)` then orders them."""
        if not self.cuda:
            return contextlib.nullcontext()
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        self._stream.wait_event(self._used[layer])
        return torch.cuda.stream(self._stream)

    def ready(self, layer: int) -> None:
        """After the copies into layer `layer`: the compute stream waits for them (no host sync)."""
        if self.cuda:
            self._ready[layer].record(self._stream)
            torch.cuda.current_stream(self.device).wait_event(self._ready[layer])

    def mark_used(self, layer: int) -> None:
        """After the compute stream enqueued its reads of layer `layer`'s slots."""
        if self.cuda:
            self._used[layer].record(torch.cuda.current_stream(self.device))

    def settle(self) -> None:
        """The compute stream waits for every copy issued so far (before bulk reads of host slots)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)

    def synchronize(self) -> None:
        """Host waits for every copy issued so far."""
        if self.cuda:
            self._stream.synchronize()

    # -- internals -------------------------------------------------------------------------------
    def _take_staging(self) -> tuple[torch.Tensor, "torch.cuda.Event"]:
        i = self._next
        self._next = (i + 1) % len(self._staging)
        self._staged[i].synchronize()  # its previous upload has finished reading it
        return self._staging[i], self._staged[i]
