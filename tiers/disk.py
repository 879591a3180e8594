"""`DiskStore`: the last tier — one append-only file per layer of encoded chunks, read through mmap.

Chunks are immutable once written (a token's KV never changes), so a chunk whose home is disk is
written once, during prefill or when a decode window chunk joins the body, and read many times.
Writes append to the layer's file (one `os.write` of the payload); reads slice the file's mmap at
the record's offset, verify the CRC and decode straight into the caller's buffer (host staging or a
CPU pool slot). The index (offset, size, crc, compressed) lives in memory: spill files are scratch,
never reopened by another process (sessions have their own self-describing format).

Truncation drops records from a chunk id on; the file is cut back to the end of the last live record,
so a chat that rewinds and regrows reuses the space.
"""

from __future__ import annotations

import mmap
import os
import weakref
from dataclasses import dataclass

import torch

from .codec import ChunkCodec, CorruptChunkError
from .layout import ChunkLayout
from .spill import SpillDir, spill_error

__all__ = ["DiskStore"]

_RANDOM = hasattr(mmap, "MADV_RANDOM") and hasattr(mmap, "MADV_WILLNEED")  # Linux, macOS


@dataclass(frozen=True)
class _Record:
    offset: int
    nbytes: int
    crc: int
    compressed: bool


class DiskStore:
    """Per-layer spill files of chunks, each chunk a [2, R, C, D] tensor of the layout's dtype.

    layout: the chunk geometry; spill: the private directory the files live in (owned: closed with
    the store); compress: zstd after byte-shuffle (see `codec.default_compress`).
    """

    def __init__(self, layout: ChunkLayout, spill: SpillDir, compress: bool):
        self.layout = layout
        self.spill = spill
        self.codec = ChunkCodec(itemsize=layout.itemsize, compress=compress)
        n = layout.n_layers
        self._fds: list[int | None] = [None] * n
        self._maps: list[mmap.mmap | None] = [None] * n
        self._ends = [0] * n  # file size per layer
        self._index: list[dict[int, _Record]] = [{} for _ in range(n)]
        # a store dropped without close(): unmap and close the fds too (unlinked files keep their
        # disk space while an fd is open); the lists are shared, mutated in place
        self._finalizer = weakref.finalize(self, _release, self._fds, self._maps)

    # -- writing ---------------------------------------------------------------------------------
    def append(self, layer: int, chunk_id: int, chunk: torch.Tensor) -> None:
        """Write chunk `chunk_id` of `layer`. chunk: CPU tensor [2, R, C, D]."""
        if chunk_id in self._index[layer]:
            raise ValueError(f"chunk {chunk_id} of layer {layer} is already on disk")
        payload, compressed, crc = self.codec.encode(chunk)
        fd = self._fd(layer)
        offset, view = self._ends[layer], memoryview(payload)
        try:
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
        except OSError as e:  # a full disk: give the partial record back, raise DiskFullError
            os.ftruncate(fd, offset)
            raise spill_error(e, self.spill.path) from None
        self._ends[layer] = offset + len(payload)
        self._index[layer][chunk_id] = _Record(offset, len(payload), crc, compressed)

    def drop_from(self, layer: int, chunk_id: int) -> None:
        """Forget chunks >= chunk_id of `layer` and give their tail of the file back."""
        index = self._index[layer]
        for j in [j for j in index if j >= chunk_id]:
            del index[j]
        end = max((r.offset + r.nbytes for r in index.values()), default=0)
        if self._fds[layer] is not None and end < self._ends[layer]:
            self._unmap(layer)  # never leave a mapping past the new end of file (SIGBUS)
            os.ftruncate(self._fds[layer], end)
            self._ends[layer] = end

    # -- reading ---------------------------------------------------------------------------------
    def will_need(self, layer: int, chunk_ids: list[int]) -> None:
        """Ask the kernel for these records' pages now, all at once, so that a fetch's disk reads
        overlap instead of waiting on the device one record at a time (`read_into` then finds them
        in the page cache or in flight). Unknown ids are left to `read_into` to report."""
        if not _RANDOM or not chunk_ids:
            return
        index = self._index[layer]
        recs = [index[c] for c in chunk_ids if c in index]
        if not recs:
            return
        mm = self._map(layer, max(r.offset + r.nbytes for r in recs))
        for rec in recs:
            _advise(mm, rec)

    def read_into(self, layer: int, chunk_id: int, out: torch.Tensor) -> None:
        """Decode chunk `chunk_id` of `layer` into `out` (contiguous CPU [2, R, C, D]).
        Raises CorruptChunkError when the stored bytes fail their checksum."""
        rec = self._index[layer].get(chunk_id)
        if rec is None:
            raise KeyError(f"chunk {chunk_id} of layer {layer} is not on disk")
        mm = self._map(layer, rec.offset + rec.nbytes)
        if _RANDOM:  # the record's pages in one read, nothing around them (see `_map`)
            _advise(mm, rec)
        payload = memoryview(mm)[rec.offset : rec.offset + rec.nbytes]
        try:
            self.codec.decode_into(payload, rec.compressed, rec.crc, out)
        except CorruptChunkError as e:
            raise CorruptChunkError(f"layer {layer} chunk {chunk_id}: {e}") from None
        finally:
            payload.release()  # an exported buffer would keep the mmap from closing

    # -- accounting ------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of live records on disk (after compression)."""
        return sum(r.nbytes for index in self._index for r in index.values())

    @property
    def n_chunks(self) -> int:
        return sum(len(index) for index in self._index)

    def files(self) -> list[str]:
        """Paths of the layer files created so far."""
        return [str(self.spill.path / self._name(i)) for i, fd in enumerate(self._fds) if fd is not None]

    def flush(self) -> None:
        """fdatasync every layer file (benchmarks: time writes to the device, not the page cache)."""
        for fd in self._fds:
            if fd is not None:
                os.fdatasync(fd)

    def evict_page_cache(self) -> None:
        """Ask the kernel to drop these files from the page cache (benchmarks: cold reads)."""
        for layer, fd in enumerate(self._fds):
            if fd is not None:
                self._unmap(layer)
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Unmap, close and remove every file (idempotent)."""
        self._finalizer()
        self._index = [{} for _ in range(self.layout.n_layers)]
        self.spill.close()

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _name(layer: int) -> str:
        return f"layer_{layer:03d}.kv"

    def _fd(self, layer: int) -> int:
        if self._fds[layer] is None:
            self._fds[layer] = self.spill.file(self._name(layer))
        return self._fds[layer]

    def _map(self, layer: int, need: int) -> mmap.mmap:
        """A read-only mapping of `layer`'s file covering at least `need` bytes (remapped as the
        file grows; the old mapping goes once nothing exports it)."""
        mm = self._maps[layer]
        if mm is None or len(mm) < need:
            self._unmap(layer)
            mm = mmap.mmap(self._fds[layer], self._ends[layer], access=mmap.ACCESS_READ)
            if _RANDOM:  # sparse decode reads scattered records: the kernel's readahead around a
                mm.madvise(mmap.MADV_RANDOM)  # fault read ~1 MB per 32 KiB record (bench/scale.py)
            self._maps[layer] = mm
        return mm

    def _unmap(self, layer: int) -> None:
        mm, self._maps[layer] = self._maps[layer], None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # still exported somewhere: let GC close it
                pass


def _advise(mm: mmap.mmap, rec: _Record) -> None:
    """MADV_WILLNEED of the pages holding `rec`: the kernel reads them now, and only them."""
    start = rec.offset - rec.offset % mmap.PAGESIZE
    mm.madvise(mmap.MADV_WILLNEED, start, rec.offset + rec.nbytes - start)


def _release(fds: list, maps: list) -> None:
    for i, mm in enumerate(maps):
        maps[i] = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
    for i, fd in enumerate(fds):
        fds[i] = None
        if fd is not None:
            os.close(fd)
