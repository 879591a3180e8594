"""Invariant 4: bytes written to a tier come back identical (GPU <-> host <-> disk, zstd on and off),
plus the disk tier's integrity checks and its private, self-cleaning spill directories."""

import os
import stat
import subprocess
import sys

import pytest
import torch

from offload.tiers.codec import ChunkCodec, CorruptChunkError
from offload.tiers.disk import DiskStore
from offload.tiers.gpu import GpuPool
from offload.tiers.host import HostPool
from offload.tiers.layout import ChunkLayout
from offload.tiers.spill import SpillDir, reap_stale
from offload.tiers.transfer import Transfer

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _chunk(layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(layout.chunk_shape, generator=g).to(layout.dtype)
    flat = x.view(-1)
    flat[:4] = torch.tensor([float("inf"), float("-inf"), -0.0, float("nan")]).to(layout.dtype)
    return x


def _same_bytes(a, b):
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compress", [False, True])
def test_codec_round_trip(dtype, compress):
    layout = ChunkLayout(1, rows=3, chunk=16, head_dim=32, dtype=dtype)
    codec = ChunkCodec(itemsize=layout.itemsize, compress=compress)
    x = _chunk(layout, 0)
    payload, compressed, crc = codec.encode(x)
    out = torch.empty_like(x)
    codec.decode_into(payload, compressed, crc, out)
    assert _same_bytes(x, out)
    if compress and dtype == torch.bfloat16:
        assert compressed and len(payload) < x.numel() * x.element_size()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compress", [False, True])
def test_gpu_host_disk_round_trip(tmp_path, dtype, compress):
    layout = ChunkLayout(2, rows=2, chunk=8, head_dim=16, dtype=dtype)
    gpu = GpuPool(layout, [2, 3], "cpu")
    host = HostPool(layout, capacity=5, pin=False, arena_bytes=2 * layout.chunk_bytes)
    disk = DiskStore(layout, SpillDir(tmp_path), compress=compress)
    xfer = Transfer("cpu", layout)
    chunks = [_chunk(layout, s) for s in range(5)]
    for j, x in enumerate(chunks):  # device -> host, device -> disk
        xfer.to_host(x, host.view(j))
        disk.append(1, j, xfer.to_cpu(x))
    for j, x in enumerate(chunks):  # host -> device slot, disk -> device slot, back to host
        xfer.upload(host.view(j), gpu.view(1, j % 3))
        assert _same_bytes(gpu.view(1, j % 3), x)
        xfer.upload_from(lambda buf, j=j: disk.read_into(1, j, buf), gpu.view(0, j % 2))
        assert _same_bytes(gpu.view(0, j % 2), x)
        back = torch.empty_like(x)
        xfer.upload_from(lambda buf, j=j: disk.read_into(1, j, buf), back[:, :, :])
        assert _same_bytes(back, x)
    disk.close()


def test_disk_detects_flipped_byte_and_truncates(tmp_path):
    layout = ChunkLayout(1, rows=1, chunk=4, head_dim=8, dtype=torch.float32)
    disk = DiskStore(layout, SpillDir(tmp_path), compress=False)
    for j in range(3):
        disk.append(0, j, _chunk(layout, j))
    (path,) = disk.files()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # flip one byte of chunk 1
        f.seek(layout.chunk_bytes + 5)
        b = f.read(1)
        f.seek(layout.chunk_bytes + 5)
        f.write(bytes([b[0] ^ 0x10]))
    out = torch.empty(layout.chunk_shape)
    disk.read_into(0, 0, out)
    with pytest.raises(CorruptChunkError):
        disk.read_into(0, 1, out)
    disk.drop_from(0, 1)  # the file shrinks back to chunk 0, and grows again on append
    assert os.path.getsize(path) == size // 3
    disk.append(0, 1, _chunk(layout, 7))
    disk.read_into(0, 1, out)
    assert _same_bytes(out, _chunk(layout, 7))
    disk.close()


def test_disk_will_need_then_reads_the_same_bytes(tmp_path):
    """A fetch asks for every disk miss's pages first (`will_need`), across the file's growth
    (the mapping is redone), with ids that are not (or no longer) on disk left to `read_into`."""
    layout = ChunkLayout(2, rows=2, chunk=4, head_dim=8, dtype=torch.bfloat16)
    disk = DiskStore(layout, SpillDir(tmp_path), compress=True)
    disk.will_need(1, [0, 1])  # nothing on disk yet: no file, no error
    assert disk.files() == []
    out = torch.empty(layout.chunk_shape, dtype=layout.dtype)
    for grow in (3, 6):
        for j in range(grow - 3, grow):
            disk.append(1, j, _chunk(layout, j))
        disk.will_need(1, list(range(grow)) + [99])
        for j in reversed(range(grow)):
            disk.read_into(1, j, out)
            assert _same_bytes(out, _chunk(layout, j))
    disk.drop_from(1, 4)
    disk.will_need(1, [5, 3])
    disk.read_into(1, 3, out)
    assert _same_bytes(out, _chunk(layout, 3))
    with pytest.raises(KeyError):
        disk.read_into(1, 5, out)
    disk.close()


def test_spill_files_private_and_removed(tmp_path):
    layout = ChunkLayout(1, rows=1, chunk=4, head_dim=8, dtype=torch.float32)
    spill = SpillDir(tmp_path / "spill")
    disk = DiskStore(layout, spill, compress=True)
    disk.append(0, 0, _chunk(layout, 0))
    (path,) = disk.files()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(spill.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(spill.path.parent).st_mode) == 0o700
    disk.close()
    assert not spill.path.exists() and not spill.path.parent.exists()


def test_spill_removed_at_exit_and_after_a_crash(tmp_path):
    root = tmp_path / "spill"
    code = (
        "import os, sys, torch\n"
        "from offload.tiers.spill import SpillDir\n"
        "s = SpillDir(sys.argv[1]); os.close(s.file('x.kv')); print(s.path, flush=True)\n"
        "if sys.argv[2] == 'crash': os._exit(9)\n"
    )
    clean = subprocess.run([sys.executable, "-c", code, str(root), "exit"], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert not os.path.exists(clean.stdout.strip())  # finalizer ran at interpreter exit
    crash = subprocess.run([sys.executable, "-c", code, str(root), "crash"], capture_output=True, text=True)
    left = crash.stdout.strip()
    assert os.path.exists(left)  # a killed process cannot clean up...
    mine = SpillDir(root)  # ...the next start does, and spares live processes' directories
    assert not os.path.exists(left)
    assert mine.path.exists() and reap_stale(root) == []
    mine.close()


@pytest.mark.parametrize("parts", [1, 2])
def test_gpu_pool_gather_rows_reads_each_rows_own_chunks(parts):
    """gather_rows(slots)[t, i, j] is slot slots[i, j]'s part t (k or v) of row i: the flat-row
    arithmetic against plain indexing of the pool, over two layers' slots."""
    layout = ChunkLayout(2, rows=3, chunk=4, head_dim=8, dtype=torch.float32)
    gpu = GpuPool(layout, [3, 4], "cpu")
    gpu.kv.copy_(torch.randn(gpu.kv.shape, generator=torch.Generator().manual_seed(0)))
    slots = torch.tensor([[0, 6, 2], [5, 5, 1], [3, 4, 0]])  # [R, k] global slots
    out = gpu.gather_rows(slots, parts)
    assert out.shape == (parts, 3, 3, 4 * 8)
    for t in range(parts):
        for i in range(3):
            for j in range(3):
                assert torch.equal(out[t, i, j], gpu.kv[slots[i, j], t, i].reshape(-1))


def test_gpu_pool_gather_tokens_reads_each_rows_own_tokens():
    """gather_tokens(slots, offsets)[t, i, j] is token offsets[i, j] of slot slots[i, j]'s part t
    (k or v) of row i: the flat-row arithmetic against plain indexing of the pool."""
    layout = ChunkLayout(2, rows=3, chunk=4, head_dim=8, dtype=torch.float32)
    gpu = GpuPool(layout, [3, 4], "cpu")
    gpu.kv.copy_(torch.randn(gpu.kv.shape, generator=torch.Generator().manual_seed(0)))
    slots = torch.tensor([[0, 6, 2, 6], [5, 5, 1, 0], [3, 4, 0, 6]])  # [R, k] global slots
    offsets = torch.tensor([[0, 3, 1, 2], [2, 2, 3, 0], [1, 0, 3, 3]])  # [R, k] token in its chunk
    out = gpu.gather_tokens(slots, offsets)
    assert out.shape == (2, 3, 4, 8)
    for t in range(2):
        for i in range(3):
            for j in range(4):
                assert torch.equal(out[t, i, j], gpu.kv[slots[i, j], t, i, offsets[i, j]])
