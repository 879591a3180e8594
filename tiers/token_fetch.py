"""The bytes of single (KV head, token) rows a `TokenCache` missed, read from wherever their chunk is.

A missed row of body position t in row r lives in chunk j = t // C at offset t % C: read from the
chunk's GPU copy when it has one (a device-side gather), else from its home — the host pool (one
gather per host arena) or the disk store (records decoded into a batch buffer, then one gather of their rows). One
call per layer step, for all its misses at once; the caller writes the result into its slots.
"""

from __future__ import annotations

import torch

__all__ = ["read_rows", "DISK_BATCH"]

DISK_BATCH = 512  # disk records decoded into one buffer at a time (8 MiB of bf16 Llama-8B chunks)


def read_rows(layer: int, rows: torch.Tensor, positions: torch.Tensor, *, mgr, gpu, host, disk,
              device) -> torch.Tensor:  # fmt: skip
    """k, v of rows long [n] at body positions long [n] (CPU) of `layer`: [2, n, D] on `device`.

    mgr: the TierManager (placement); gpu, host: the pools; disk: the DiskStore or None."""
    lay = gpu.layout
    n = rows.shape[0]
    out = torch.empty(2, n, lay.head_dim, dtype=lay.dtype, device=device)
    if n == 0:
        return out
    chunks, inverse = torch.unique(positions // lay.chunk, return_inverse=True)
    offsets = positions % lay.chunk
    host_slot, gpu_slot = (torch.tensor(x, dtype=torch.long) for x in mgr.homes(layer, chunks.tolist()))
    gpu_slot = torch.where(gpu_slot >= 0, gpu_slot + gpu.base[layer], -1)  # global slots
    on_disk_idx = ((gpu_slot < 0) & (host_slot < 0)).nonzero().flatten()  # chunks only the disk holds
    on_disk = chunks.index_select(0, on_disk_idx).tolist()
    g = gpu_slot.index_select(0, inverse)  # per row: its chunk's
    h = host_slot.index_select(0, inverse)
    from_gpu = (g >= 0).nonzero().flatten()
    if from_gpu.numel():
        got = gpu.read_tokens(*(t.index_select(0, from_gpu).to(device) for t in (g, rows, offsets)))
        out.index_copy_(1, from_gpu.to(device), got)
    from_host = ((g < 0) & (h >= 0)).nonzero().flatten()
    if from_host.numel():
        got = host.read_tokens(*(t.index_select(0, from_host) for t in (h, rows, offsets)))  # pinned on CUDA
        out.index_copy_(1, from_host.to(device), got.to(device, non_blocking=True))
    if on_disk:
        disk.will_need(layer, on_disk)  # every record's pages asked for before the first read
        at = ((g < 0) & (h < 0)).nonzero().flatten()  # rows whose chunk only the disk holds
        place = torch.full((chunks.shape[0],), -1, dtype=torch.long)  # chunk index -> index in on_disk
        place[on_disk_idx] = torch.arange(len(on_disk))
        which = place.index_select(0, inverse.index_select(0, at))  # [n_disk_rows] in 0..len(on_disk)
        r, o = rows.index_select(0, at), offsets.index_select(0, at)
        for lo in range(0, len(on_disk), DISK_BATCH):  # records decoded into one buffer, then one gather
            batch = on_disk[lo : lo + DISK_BATCH]
            buf = torch.empty(len(batch), *lay.chunk_shape, dtype=lay.dtype)  # [n, 2, R, C, D]
            for i, j in enumerate(batch):
                disk.read_into(layer, j, buf[i])
            mine = ((which >= lo) & (which < lo + len(batch))).nonzero().flatten()
            got = buf[which.index_select(0, mine) - lo, :, r.index_select(0, mine), o.index_select(0, mine)]
            out.index_copy_(1, at.index_select(0, mine).to(device), got.transpose(0, 1).to(device))
    return out
