"""The bytes of single (KV head, token) rows a `TokenCache` missed, read from wherever their chunk is.

A missed row of body position t in row r lives in chunk j = t // C at offset t % C: read from the
chunk's GPU copy when it has one (a device-side gather), else from its home — the host pool (one
gather per host arena) or the disk store (the record decoded, all of its chunk's misses taken). One
call per layer step, for all its misses at once; the caller writes the result into its slots.
"""

from __future__ import annotations

import torch

from .manager import HOST

__all__ = ["read_rows"]


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
    gpu_slot, host_slot, on_disk = [], [], []
    for j in chunks.tolist():
        p = mgr.placement(layer, j)
        gpu_slot.append(-1 if p.gpu_slot is None else gpu.global_slot(layer, p.gpu_slot))
        host_slot.append(p.host_slot if p.home == HOST else -1)
        if p.gpu_slot is None and p.home != HOST:
            on_disk.append(j)
    g = torch.tensor(gpu_slot, dtype=torch.long).index_select(0, inverse)  # per row: its chunk's
    h = torch.tensor(host_slot, dtype=torch.long).index_select(0, inverse)
    from_gpu = (g >= 0).nonzero().flatten()
    if from_gpu.numel():
        got = gpu.read_tokens(*(t.index_select(0, from_gpu).to(device) for t in (g, rows, offsets)))
        out.index_copy_(1, from_gpu.to(device), got)
    from_host = ((g < 0) & (h >= 0)).nonzero().flatten()
    if from_host.numel():
        got = host.read_tokens(*(t.index_select(0, from_host) for t in (h, rows, offsets)))
        out.index_copy_(1, from_host.to(device), got.to(device))
    if on_disk:
        disk.will_need(layer, on_disk)  # every record's pages asked for before the first read
        buf = torch.empty(lay.chunk_shape, dtype=lay.dtype)
        rest = ((g < 0) & (h < 0)).nonzero().flatten()
        rest = rest.index_select(0, torch.argsort(inverse.index_select(0, rest), stable=True))  # by chunk
        _, counts = torch.unique_consecutive(inverse.index_select(0, rest), return_counts=True)
        for j, at in zip(on_disk, torch.split(rest, counts.tolist())):  # on_disk is ascending, as chunks
            disk.read_into(layer, j, buf)  # [2, R, C, D]
            got = buf[:, rows.index_select(0, at), offsets.index_select(0, at)]  # [2, n_j, D]
            out.index_copy_(1, at.to(device), got.to(device))
    return out
