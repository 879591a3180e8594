"""`ChunkCodec`: the bytes of one chunk on disk — optional byte-shuffle + zstd level 1, and a CRC-32.

Why shuffle: a bf16 value's high byte (sign, exponent, top mantissa bits) repeats a lot, its low byte
is noise. Grouping all high bytes before all low bytes lets zstd find the repetition. On real KV
bf16 shrinks enough to pay, fp16 a little, fp32 not at all, and level 3 buys nothing over level 1
(`python bench/tiers.py codec`; that run is not kept in bench/results/, its figures are in this
docstring at commit 92ae404). So compression is on by default for bf16 only (`default_compress`). A
chunk that does not shrink is stored raw (flag per record), so `compress=True` never costs space.

The checksum covers the stored payload (compressed or not), so a flipped byte is caught before
decompression; zlib.crc32 runs well above disk speed (figures at commit 92ae404).

A codec holds zstd contexts: not thread-safe; one codec per thread.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import zstandard

__all__ = ["ChunkCodec", "CorruptChunkError", "default_compress"]


class CorruptChunkError(ValueError):
    """A stored chunk's checksum, size or compressed stream does not match what was written."""


def default_compress(dtype: torch.dtype, compress: bool | None) -> bool:
    """`OffloadConfig.compress` resolved: None means on for bf16 only (where it pays)."""
    return dtype == torch.bfloat16 if compress is None else bool(compress)


def _as_bytes(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's bytes as a flat uint8 array (a view when t is contiguous)."""
    return t.detach().contiguous().view(torch.uint8).reshape(-1).numpy()


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _shuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    """Elements' bytes regrouped into planes: all byte 0s, then all byte 1s, ... ([itemsize, N]).
    Shifts and casts on whole words (SIMD) rather than a strided byte transpose, which is an order of
    magnitude slower (figures in this docstring at commit 92ae404)."""
    if itemsize == 1:
        return raw
    u = raw.view(_UINT[itemsize])
    return np.concatenate([(u >> (8 * k)).astype(np.uint8) for k in range(itemsize)])


def _unshuffle(planes: np.ndarray, itemsize: int, dst: np.ndarray) -> None:
    """Inverse of `_shuffle`, written into the flat uint8 array `dst`."""
    if itemsize == 1:
        dst[:] = planes
        return
    utype, n = _UINT[itemsize], dst.nbytes // itemsize
    u = dst.view(utype)
    np.copyto(u, planes[:n], casting="unsafe")  # byte 0, zero-extended
    for k in range(1, itemsize):
        word = planes[k * n : (k + 1) * n].astype(utype)
        word <<= 8 * k
        u |= word


@dataclass(frozen=True)
class ChunkCodec:
    """Encode/decode chunk tensors to/from stored payloads.

    itemsize: bytes per element (2 for bf16/fp16, 4 for fp32), the shuffle stride.
    compress: try zstd after shuffling; level: zstd level (1: see the module doc).
    """

    itemsize: int
    compress: bool
    level: int = 1
    _cctx: zstandard.ZstdCompressor = field(init=False, repr=False, compare=False)
    _dctx: zstandard.ZstdDecompressor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.itemsize not in (1, 2, 4, 8):
            raise ValueError(f"itemsize must be 1, 2, 4 or 8, got {self.itemsize}")
        cctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        object.__setattr__(self, "_cctx", cctx)
        object.__setattr__(self, "_dctx", zstandard.ZstdDecompressor())

    def encode(self, chunk: torch.Tensor) -> tuple[memoryview | bytes, bool, int]:
        """chunk: CPU tensor (any shape). Returns (payload, compressed, crc32 of payload)."""
        raw = _as_bytes(chunk)
        payload, compressed = memoryview(raw), False
        if self.compress:
            packed = self._cctx.compress(_shuffle(raw, self.itemsize))
            if len(packed) < raw.nbytes:
                payload, compressed = packed, True
        return payload, compressed, zlib.crc32(payload)

    @staticmethod
    def verify(payload, crc: int) -> None:
        """Raise CorruptChunkError unless `payload`'s CRC-32 is `crc`."""
        if zlib.crc32(payload) != crc:
            raise CorruptChunkError("chunk checksum mismatch (the stored bytes were altered)")

    def decode_into(self, payload, compressed: bool, crc: int, out: torch.Tensor) -> None:
        """Verify `payload` against `crc` and write the chunk it holds into `out` (contiguous CPU
        tensor of the chunk's shape and dtype). Raises CorruptChunkError on any mismatch."""
        self.verify(payload, crc)
        if not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError("decode_into needs a contiguous CPU output tensor")
        dst = _as_bytes(out)  # a view: writing it writes `out`
        if not compressed:
            if len(payload) != dst.nbytes:
                raise CorruptChunkError(f"chunk holds {len(payload)} bytes, expected {dst.nbytes}")
            dst[:] = np.frombuffer(payload, dtype=np.uint8)
            return
        try:
            plain = self._dctx.decompress(payload, max_output_size=dst.nbytes)
        except zstandard.ZstdError as e:
            raise CorruptChunkError(f"chunk does not decompress: {e}") from None
        if len(plain) != dst.nbytes:
            raise CorruptChunkError(f"chunk decompresses to {len(plain)} bytes, expected {dst.nbytes}")
        _unshuffle(np.frombuffer(plain, dtype=np.uint8), self.itemsize, dst)
