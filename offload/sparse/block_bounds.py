"""`BlockBounds`: the first level of a two-level token selection (`Token(candidates=...)`): one
small summary per block of `block` body tokens and KV head, made from the tokens' int8 sketches, that
bounds every sketch bound inside the block. A step scores the blocks, keeps the best as candidates
and scores single tokens only there: its cost grows with context / block + candidates, not context.

A token's sketch stands for k^ = P (scale * levels) (`policies/token.py`); its bound is
q~ . k^ + half_step |q~|_1 scale + ||q_res|| res. Over a block, with a_i / b_i the least / greatest
coordinate i of (scale * levels) among its tokens, centre c = (a + b) / 2 and radius w = (b - a) / 2,

    block bound = q~ . c + |q~| . w + half_step |q~|_1 max(scale) + ||q_res|| max(res)
                >= every token bound in the block (each term bounds its token counterpart),

the box bound of Quest taken in the sketch's r dimensions. Only complete blocks have a summary: the
tokens past the last complete block are always candidates. `update` recomputes the complete blocks
that a write touched from the sketches themselves, so a rewound and refilled block is never stale.
Memory: (2r + 2) numbers per block and KV head ((2r + 2) * itemsize / block bytes per token): fp32,
or fp16 where `summary_dtype` says (a GPU with 16-bit KV: half the resident bytes). In fp16 every
stored number still bounds: the centre is rounded to nearest and the radius widened by that rounding
error, the radius and maxima rounded up (x * (1 + 2^-10) rounds to an fp16 >= x); scoring reads them
in fp32.

A third level (`fan` > 0): superblocks of `fan` complete blocks, each the box of its blocks' boxes
(the least centre - radius and the greatest centre + radius per coordinate, the largest maxima), so a
superblock bound is >= every block bound in it. Where keeping SUPER_OVERSAMPLE times the needed
blocks' superblocks leaves some out, a step scores the superblocks, keeps those, and scores the blocks
only inside them (and past the last complete superblock): the per-step read grows with context /
(block * fan), 1/16 of the block level's (at 1M tokens on a CPU, 256 MB of block bounds a layer step
read in 45 ms, against 16 MB of superblocks).
"""

from __future__ import annotations

import torch

__all__ = ["BlockBounds", "summary_dtype"]

_FP16_UP = 1 + 2**-10  # x * _FP16_UP rounded to fp16 is >= x (round-to-nearest errs by <= 2^-11)
SUPER_OVERSAMPLE = 4  # superblocks kept: this many times the superblocks the kept blocks would fill


def summary_dtype(device_type: str, kv_itemsize: int) -> torch.dtype:
    """fp16 on CUDA with 16-bit KV (the resident bytes are what counts there); fp32 otherwise (a CPU
    would convert fp16 to fp32 at every step: slower, and its memory is the host's)."""
    return torch.float16 if device_type == "cuda" and kv_itemsize <= 2 else torch.float32


class BlockBounds:
    """summary [L, B, Hkv, cap, 2r + 2] fp32, cap in blocks (grown by doubling): per block the
    columns centre (r), radius (r), max scale, max res, so that a block bound is one matmul with the
    query row [q~, |q~|, half_step |q~|_1, ||q_res||]. Blocks lead: the first `blocks` of a layer are
    one contiguous slice, read in place by the matmul (a copy of it would cost more than the product)."""

    def __init__(self, n_layers: int, batch: int, n_kv: int, rank: int, block: int, device,
                 dtype: torch.dtype = torch.float32, fan: int = 0):  # fmt: skip
        if block < 1 or fan < 0 or fan == 1:
            raise ValueError(f"block must be >= 1 token and fan 0 or >= 2 blocks, got {block}, {fan}")
        self.n_layers, self.batch, self.n_kv, self.rank, self.block = n_layers, batch, n_kv, rank, block
        self.device, self.dtype, self.fan = device, dtype, fan
        self.capacity = 0
        self.summary = self.coarse = None
        self._alloc(16 * max(1, fan))

    def _alloc(self, capacity: int) -> None:
        """Room for `capacity` blocks (a multiple of fan): the block rows, and the superblock rows."""
        def grown(old, rows):
            new = torch.zeros((self.n_layers, self.batch, self.n_kv, rows, 2 * self.rank + 2), dtype=self.dtype,
                              device=self.device)  # fmt: skip
            if old is not None:
                new[..., : old.shape[-2], :] = old
            return new

        self.summary = grown(self.summary, capacity)
        if self.fan:
            self.coarse = grown(self.coarse, capacity // self.fan)
        self.capacity = capacity

    def update(self, layer: int, levels: torch.Tensor, aux: torch.Tensor, start: int, end: int) -> None:
        """Body tokens [start, end) of `layer` were (re)written; levels [B, Hkv, r, >= end] int8 and aux
        [B, Hkv, 2, >= end] (scale, res) are the layer's sketches (on any device: host-resident
        sketches are read where they are, then moved). Recomputes each complete block that holds one
        of them, and each complete superblock that holds one of those."""
        blk, r = self.block, self.rank
        first, last = start // blk, end // blk  # complete blocks first .. last-1 hold a written token
        if last <= first:
            return
        if last > self.capacity:
            unit = max(1, self.fan)
            self._alloc(-(-max(last, 2 * self.capacity) // unit) * unit)
        cols = slice(first * blk, last * blk)
        b, h, n = self.batch, self.n_kv, last - first
        a = aux[..., cols].to(self.device).float().reshape(b, h, 2, n, blk)
        coords = levels[..., cols].to(self.device).float().reshape(b, h, r, n, blk) * a[:, :, :1]  # scale * levels
        self._store(self.summary[layer, :, :, first:last], coords.amin(-1), coords.amax(-1), a.amax(-1))
        if self.fan and last // self.fan > first // self.fan:
            f0, f1 = first // self.fan, last // self.fan  # complete superblocks holding a rewritten block
            rows = self.summary[layer, :, :, f0 * self.fan : f1 * self.fan].float()
            rows = rows.reshape(b, h, f1 - f0, self.fan, 2 * r + 2).transpose(-1, -2)  # [B, Hkv, s, 2r+2, fan]
            centre, radius = rows[:, :, :, :r], rows[:, :, :, r : 2 * r]
            lo, hi = (centre - radius).amin(-1), (centre + radius).amax(-1)  # [B, Hkv, s, r]
            self._store(self.coarse[layer, :, :, f0:f1], lo.transpose(-1, -2), hi.transpose(-1, -2),
                        rows[:, :, :, 2 * r :].amax(-1).transpose(-1, -2))  # fmt: skip

    def _store(self, dst: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, top: torch.Tensor) -> None:
        """Rows dst [B, Hkv, n, 2r + 2] of the box [lo, hi] ([B, Hkv, r, n] fp32) and the maxima top
        [B, Hkv, 2, n]; rounded to stay bounds when stored in fp16 (module doc)."""
        r = self.rank
        centre, radius = (lo + hi) * 0.5, (hi - lo) * 0.5
        if self.dtype != torch.float32:
            stored = centre.to(self.dtype)
            radius = (radius + (centre - stored.float()).abs()) * _FP16_UP
            centre, top = stored, top * _FP16_UP
        rows = dst.transpose(-1, -2)  # [B, Hkv, 2r + 2, n] (a view)
        rows[:, :, :r], rows[:, :, r : 2 * r], rows[:, :, 2 * r :] = centre, radius, top

    @staticmethod
    def _row(q: torch.Tensor, basis: torch.Tensor, n_kv: int, half_step: float) -> torch.Tensor:
        """The query row [B, Hkv, G, 2r + 2]: [q~, |q~|, half_step |q~|_1, ||q_res||]."""
        b, hq, d = q.shape
        qg = q.float().reshape(b, n_kv, hq // n_kv, d)  # [B, Hkv, G, D]
        q_low = torch.matmul(qg, basis)  # [B, Hkv, G, r]
        q_res = (qg - torch.matmul(q_low, basis.transpose(-1, -2))).norm(dim=-1, keepdim=True)
        q_abs = q_low.abs()
        return torch.cat([q_low, q_abs, half_step * q_abs.sum(-1, keepdim=True), q_res], dim=-1)

    def scores(self, layer: int, q: torch.Tensor, basis: torch.Tensor, blocks: int, half_step: float) -> torch.Tensor:
        """The block bound [B, Hkv, blocks] of the layer's first `blocks` blocks for q [B, H, D] on
        basis [Hkv, D, r]: the max over the query group."""
        return _bound(self._row(q, basis, self.n_kv, half_step), self.summary[layer, :, :, :blocks])

    def candidates(self, layer: int, q: torch.Tensor, basis: torch.Tensor, n_tokens: int, count: int,
                   half_step: float) -> torch.Tensor | None:  # fmt: skip
        """Body token ids [B, Hkv, T] (T >= count, ascending per row) to score singly at a step over
        n_tokens body tokens: the tokens of the ceil(count / block) complete blocks with the highest
        block bound (among the kept superblocks' blocks, three levels), then every token past the
        last complete block. None: those blocks would be all of them (score every token)."""
        blk = self.block
        full = n_tokens // blk
        keep = -(-count // blk)
        if keep >= full:
            return None
        row = self._row(q, basis, self.n_kv, half_step)
        supers = full // self.fan if self.fan else 0
        wanted = -(-SUPER_OVERSAMPLE * keep // self.fan) if self.fan else 0
        if wanted < supers:  # three levels: blocks are scored only in the best superblocks (and after)
            top = torch.topk(_bound(row, self.coarse[layer, :, :, :supers]), wanted, dim=-1, sorted=False).indices
            top = top.sort(dim=-1).values  # [B, Hkv, wanted] superblocks, ascending
            b, h, width = *top.shape[:2], row.shape[-1]
            # their blocks' rows, one run of fan rows each: one index_select over [B*Hkv*cap/fan, fan*(2r+2)]
            flat = top + torch.arange(b * h, device=top.device).view(b, h, 1) * (self.capacity // self.fan)
            runs = self.summary[layer].reshape(-1, self.fan * width).index_select(0, flat.reshape(-1))
            rows = torch.cat([runs.view(b, h, -1, width), self.summary[layer, :, :, supers * self.fan : full]], 2)
            among = (top[..., None] * self.fan + torch.arange(self.fan, device=top.device)).flatten(-2)
            rest = torch.arange(supers * self.fan, full, device=top.device).expand(b, h, -1)
            among = torch.cat([among, rest], dim=-1)  # [B, Hkv, wanted*fan + tail] block ids of `rows`
            top = among.gather(-1, torch.topk(_bound(row, rows), keep, dim=-1, sorted=False).indices)
        else:
            top = torch.topk(_bound(row, self.summary[layer, :, :, :full]), keep, dim=-1, sorted=False).indices
        top = top.sort(dim=-1).values  # ascending blocks: the gathers read forward
        ids = (top[..., None] * blk + torch.arange(blk, device=top.device)).flatten(-2)  # [B, Hkv, keep*blk]
        if n_tokens == full * blk:
            return ids
        tail = torch.arange(full * blk, n_tokens, device=top.device).expand(*ids.shape[:2], -1)
        return torch.cat([ids, tail], dim=-1)

    @property
    def nbytes(self) -> int:
        coarse = 0 if self.coarse is None else self.coarse.numel() * self.coarse.element_size()
        return self.summary.numel() * self.summary.element_size() + coarse


def _bound(row: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
    """row [B, Hkv, G, 2r + 2] against summary rows [B, Hkv, n, 2r + 2] (a contiguous slice: read in
    place; fp16: read in fp32): the bound per row, max over the group, [B, Hkv, n]."""
    return torch.matmul(row, summary.float().transpose(-1, -2)).amax(2)
