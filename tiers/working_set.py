"""`WorkingSet`: the torch sparse decode step — a selection's units gathered once, then one SDPA a step.

On a CPU a small torch op costs 10-40 us whatever its size, so a step that gathered the selected
chunks out of the pool at every call, with a cat, two matmuls and a softmax around it, is set by
its op count (bench/results/sparse-smollm2.md). Here each layer keeps one contiguous buffer

    buf[layer]: [2, R, k*U + E, D]   (k selected units of U tokens per row — chunks of C, or single
                                      tokens — then sinks + window, E tokens)

filled with the selected units when the selection changes (one indexed read of the pool) and with
the store's edges (sinks + window, which grow by a token per step) at every step (one copy). The
step itself is one `scaled_dot_product_attention` over the buffer: a single query attends to a set
of keys, so their order does not matter and no mask is needed (but for padded rows).

Chunk contents never change once in the body, so a copy stays right while the selection is the
same tensor (kept by the `Selector`) and the layer's chunks are (the store's `version(layer)` moves
when one is added, evicted or truncated); otherwise it is gathered afresh. A new selection is not
compared with the held one: that would read its values on the host at every step (a GPU sync). Mechanism only: which units, and for how long, is the `Selector`'s business.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["WorkingSet"]


class WorkingSet:
    """Per-layer gathered copies of the current selections (see module doc)."""

    def __init__(self, n_layers: int):
        self._buf: list[torch.Tensor | None] = [None] * n_layers
        self._sel: list[torch.Tensor | None] = [None] * n_layers  # the selection each buf holds
        self._ver = [-1] * n_layers  # the manager's version of the layer when it was gathered
        self._mask: list[torch.Tensor | None] = [None] * n_layers  # padded selections: [B, H, 1, size]

    def attend(self, store, layer: int, q: torch.Tensor, scaling: float, select: torch.Tensor,
               gather, unit: int, valid: torch.Tensor | None = None, want_lse: bool = False):  # fmt: skip
        """q [B, H, 1, D] over sinks + window + the units (of `unit` tokens) select [R, k] of `layer`
        names, every one resident. gather: callable () -> their K/V, [2, R, k, unit * D], called
        only when the selection is new. valid [R, k] bool: the units each row attends to (rows
        with budgets below k: the rest are stand-ins, masked out); None = all. Returns [B, 1, H, D];
        want_lse: (that, its log-sum-exp [R, g] fp32), for merging with another part (the rest)."""
        lay = store.layout
        b, h, _, d = q.shape
        r, k = select.shape
        body = k * unit
        n = store.layer_len(layer)
        ext = lay.sink_len(n) + lay.window_len(n)  # a layer with body chunks has all its sinks
        buf = self._buf[layer]
        held, version = self._sel[layer], store.version(layer)  # version: moves on add/truncate
        if held is not select or self._ver[layer] != version:
            if buf is None or buf.shape[2] < body + lay.edge_capacity:  # room to grow: a whole
                size = body + body // 4 + lay.edge_capacity  # layer's selection gains a chunk per C steps
                buf = torch.empty(2, r, size, d, dtype=lay.dtype, device=store.device)
                self._buf[layer] = buf
            if k:  # [2, R, k, U*D]: each row's k units, keys then values
                buf[:, :, :body].view(2, r, k, unit * d).copy_(gather())
            self._sel[layer], self._ver[layer] = select, version
            self._mask[layer] = None
            if valid is not None:  # per query head [B, H, 1, size]; sinks + window (after body): all
                mask = torch.ones(b, h, 1, buf.shape[2], dtype=torch.bool, device=store.device)
                rows = valid.repeat_interleave(unit, 1).view(b, r // b, 1, body)
                mask[..., :body] = rows.repeat_interleave(h // (r // b), 1)
                self._mask[layer] = mask
        buf[:, :, body : body + ext] = store.edge(layer)[:, :, :ext]
        kv = buf[:, :, : body + ext].view(2, b, r // b, body + ext, d)
        mask = self._mask[layer]
        if mask is not None:
            mask = mask[..., : body + ext]
        if want_lse:  # the softmax by hand: SDPA does not give its log-sum-exp
            g = h // (r // b)
            s = torch.matmul(q[:, :, 0].reshape(b, r // b, g, d).float(), kv[0].float().transpose(-1, -2)) * scaling
            if mask is not None:
                s = s.masked_fill(~mask.view(b, r // b, g, -1), float("-inf"))
            lse = torch.logsumexp(s, dim=-1)  # [B, Hkv, g]: sinks + window are always there, finite
            out = torch.matmul(torch.exp(s - lse[..., None]), kv[1].float())
            return out.reshape(b, 1, h, d).to(q.dtype), lse.reshape(r, g)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2)  # [B, 1, H, D]

    def unit_mass(self, store, layer: int, q: torch.Tensor, scaling: float, k: int, unit: int) -> torch.Tensor:
        """The attention mass q [B, H, 1, D] paid each of the k units of the layer's buffer at this
        step, summed over each KV head's query group: [R, k] (h2o's accumulation)."""
        lay = store.layout
        b, h, _, d = q.shape
        r, g = lay.rows, h // (lay.rows // b)
        n = store.layer_len(layer)
        size = k * unit + lay.sink_len(n) + lay.window_len(n)
        keys = self._buf[layer][0, :, :size].view(b, r // b, size, d)
        s = torch.matmul(q[:, :, 0].reshape(b, r // b, g, d).float(), keys.float().transpose(-1, -2)) * scaling
        lse = torch.logsumexp(s, dim=-1, keepdim=True)  # [B, Hkv, G, 1] over everything attended
        per_unit = torch.logsumexp(s[..., : k * unit].reshape(b, r // b, g, k, unit), dim=-1)
        return torch.exp(per_unit - lse).sum(2).reshape(r, k)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._buf if t is not None)
