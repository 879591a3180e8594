"""How a `TieredKVStore` attends: the exact path in rounds, and the sparse step over a block table.

Both read the store's pools, manager and edges (this module is the store's attention half; it owns
no state). Shapes: R = batch * Hkv rows, g query heads per KV head, C tokens per chunk, D head dim.

`attend_rounds` — exact attention over sinks + any set of body chunks + window. Chunks go through
the layer's GPU slots in rounds of at most `budget` chunks (resident ones first, then misses fetched
from host/disk), each round a partial softmax merged by log-sum-exp, so a budget smaller than the
context still gives the exact result. A selection given per KV head ([R, k] ids, -1 = none) is
fetched as one union, each row masked to its own chunks.

`attend_selected` — the decode hot path: one query per row over sinks + window + its k selected
chunks, through `kernels.sparse_decode_attention` (Triton on CUDA) with the global slots looked up
in the store's `BlockTable`; on CPU through the store's `WorkingSet` (the selection gathered once
while the selector keeps it, then one SDPA per step). When every chunk of the layer has a GPU copy
nothing is fetched or pinned and Python never sees the ids (no host sync); otherwise the union of the
ids is fetched first (the misses must be known on the host), or the step falls back to rounds when
the union exceeds the layer's slots. A selection of single tokens (config.select_unit, ids of body
tokens) makes the chunks that hold them resident the same way, then the `WorkingSet` gathers the
tokens, on every device; when those chunks outgrow the slots, rounds over them mask each row to its
own tokens. Rows with budgets below the selection's width (adaptive splits per KV head) end in -1:
a real token of the row stands in for the gather and the working set masks it out.
"""

from __future__ import annotations

import torch

from offload.kernels.dispatch import causal_prefill_attention, sparse_decode_attention

from .attention import from_rows, merge_partials, partial_attention, to_rows

__all__ = ["attend_rounds", "attend_selected", "kernel_args"]


def attend_selected(store, layer: int, q: torch.Tensor, scaling: float, select: torch.Tensor,
                    want_mass: bool = False):  # fmt: skip
    """q [B, H, 1, D] over sinks + window + chunks select [R, k] (long, on the device; -1 padding
    only in token selections).
    Returns [B, 1, H, D]; with want_mass also (select, mass [R, k]) for h2o."""
    mgr = store._mgr
    b, h, _, d = q.shape
    k = select.shape[1]
    if store._sel.tokens:
        return _attend_tokens(store, layer, q, scaling, select)
    if mgr.all_resident(layer):
        mgr.note_hits(select.numel())  # one per (row, chunk) read: counting distinct ids would sync
        pinned = False
    else:
        ids = sorted(set(select.reshape(-1).tolist()))  # host sync: misses are fetched by Python
        if len(ids) > mgr.budgets[layer]:
            return attend_rounds(store, layer, q, scaling, None, select, want_mass)
        store._fetch(layer, ids)
        pinned = True
    store._xfer.ready(layer)  # copies an earlier prefetch issued into this layer's slots
    if store._ws is not None and not pinned and not want_mass:  # CPU: gathered once per selection
        out = store._ws.attend(store, layer, q, scaling, select,
                               lambda: store._gpu.gather_rows(store._table.slots(layer, mgr, select)),
                               store.layout.chunk)  # fmt: skip
        store._xfer.mark_used(layer)
        return out
    slots = store._table.slots(layer, mgr, select)  # [R, k] global pool slots
    out, lse = sparse_decode_attention(*kernel_args(store, layer, q, slots), scaling)
    mass = _chunk_mass(store, q, slots, lse, scaling) if want_mass and k else None
    store._xfer.mark_used(layer)
    if pinned:
        mgr.release(layer)
    res = out.view(b, 1, h, d)
    return (res, (select, mass)) if want_mass else res


def _attend_tokens(store, layer: int, q: torch.Tensor, scaling: float, select: torch.Tensor):
    """q [B, H, 1, D] over sinks + window + the body tokens select [R, k] names: the chunks holding
    them made resident (as chunk ids), the tokens gathered by the `WorkingSet`. [B, 1, H, D]."""
    mgr, c = store._mgr, store.layout.chunk
    kept, valid = select, None  # kept: the selector's tensor (the working set knows a selection by it)
    if store._sel.padded[layer]:  # rows with budgets below k end in -1: a real token stands in, masked
        valid = select >= 0
        select = torch.where(valid, select, select[:, :1].clamp(min=0))
    chunks = torch.div(select, c, rounding_mode="floor")  # [R, k] the chunk of each token
    pinned = not mgr.all_resident(layer)
    if pinned:
        ids = sorted(set(chunks.reshape(-1).tolist()))  # host sync: misses are fetched by Python
        if len(ids) > mgr.budgets[layer]:  # in rounds of at most the slots, still these tokens only
            own = select if valid is None else select.masked_fill(~valid, -1)
            return attend_rounds(store, layer, q, scaling, None, own)
        store._fetch(layer, ids)
    else:
        mgr.note_hits(select.numel())  # one per (row, token) read
    store._xfer.ready(layer)

    def gather():  # [2, R, k, D]
        return store._gpu.gather_tokens(store._table.slots(layer, mgr, chunks), select - chunks * c)

    out = store._ws.attend(store, layer, q, scaling, kept, gather, 1, valid)
    store._xfer.mark_used(layer)
    if pinned:
        mgr.release(layer)
    return out


def kernel_args(store, layer: int, q: torch.Tensor, slots: torch.Tensor) -> tuple:
    """What `kernels.sparse_decode_attention` reads for q [B, H, 1, D] over the chunks in global pool
    slots [R, k]: (q [B, H, D], k_pool, v_pool [S, R, C, D] views of the pool, block table
    [B, Hkv, k], body_len [B, Hkv] int32, sinks + window as extra_k, extra_v [B, Hkv, E, D] views of
    the edge buffer, extra_len [B] int32). No copies of KV."""
    lay, n, dev = store.layout, store._n[layer], store.device
    b, hkv, d = q.shape[0], store.n_kv_heads, q.shape[-1]
    k = slots.shape[1]
    body_len = torch.full((b, hkv), k * lay.chunk, dtype=torch.int32, device=dev)
    if k == 0:  # a zero-width block table: give the kernel one (masked) entry
        slots = torch.zeros(lay.rows, 1, dtype=torch.long, device=dev)
    ext = lay.sink_len(n) + lay.window_len(n)  # a layer with body chunks has all its sinks: [0, ext)
    e = store._edge[layer, :, :, :ext].view(2, b, hkv, ext, d)
    extra_len = torch.full((b,), ext, dtype=torch.int32, device=dev)
    pool = store._gpu
    return q[:, :, 0], pool.k_pool, pool.v_pool, slots.view(b, hkv, -1), body_len, e[0], e[1], extra_len


def _chunk_mass(store, q, slots, lse, scaling):
    """Attention mass per selected chunk of one query: slots [R, k] global, lse [B, H] -> [R, k]."""
    lay = store.layout
    r, k = slots.shape
    g = q.shape[1] // store.n_kv_heads
    keys = store._gpu.gather_rows(slots, parts=1)[0]  # [R, k, C*D]
    chunk_lse = _chunk_lse(store, to_rows(q, store.n_kv_heads), keys.reshape(r, k * lay.chunk, -1),
                           scaling, None)  # [R, g, k]  # fmt: skip
    return torch.exp(chunk_lse - lse.view(r, g, 1)).sum(1)


def attend_rounds(store, layer, q, scaling, sliding_window, select, want_mass: bool = False):
    """Exact attention of q [B, H, Lq, D] over sinks + window + the chunks `select` names (None =
    every body chunk; ids of body tokens when the selector picks tokens) in rounds (module doc).
    Returns [B, Lq, H, D]; want_mass (one query, a
    selection given) also returns (ids [R, n] long, mass per row on each of them [R, n]) for h2o."""
    lay, n, lq, mgr = store.layout, store._n[layer], q.shape[2], store._mgr
    dev = store.device
    qr = to_rows(q, store.n_kv_heads)  # [R, g, Lq, D]
    qpos = torch.arange(n - lq, n, device=dev)
    ids, row_has = _union(store, layer, select)
    if sliding_window is not None:  # skip chunks no query can see
        first = n - lq - sliding_window + 1
        keep = [i for i, j in enumerate(ids) if lay.chunk_start(j + 1) - 1 >= first]
        ids = [ids[i] for i in keep]
        row_has = None if row_has is None else row_has[:, keep]
    # edges (sinks + window, always resident) join the first round: one softmax when the
    # budget covers the selection; later rounds (resident chunks first) merge by log-sum-exp
    ns, w, m = lay.sink_len(n), lay.window_len(n), mgr.n_chunks(layer)
    e = store._edge[layer]
    edge_k = [e[0, :, :ns], e[0, :, lay.sinks : lay.sinks + w]]  # [R, *, D] each
    edge_v = [e[1, :, :ns], e[1, :, lay.sinks : lay.sinks + w]]
    edge_pos = torch.cat([torch.arange(ns), torch.arange(w) + lay.chunk_start(m)]).to(dev)
    budget = mgr.budgets[layer]
    shape = (store.batch, store.n_kv_heads, n, -1)
    if row_has is None and len(ids) == m and m <= budget:  # whole layer in one round:
        k, v = store._gpu.gather(store._fetch(layer, ids))  # chunks in position order
        k = torch.cat([edge_k[0], k, edge_k[1]], dim=1).reshape(shape)
        v = torch.cat([edge_v[0], v, edge_v[1]], dim=1).reshape(shape)
        out = causal_prefill_attention(q, k, v, scaling, sliding_window)  # positions 0..n-1: plain SDPA
        store._xfer.mark_used(layer)
        mgr.release(layer)
        return out
    order = sorted(range(len(ids)), key=lambda i: mgr.gpu_slot(layer, ids[i]) is None)
    out = lse = None
    g = q.shape[1] // store.n_kv_heads
    chunk_lse = None  # want_mass: per-chunk log-sum-exp [R, g, len(ids)]
    if want_mass:
        chunk_lse = torch.full((lay.rows, g, len(ids)), float("-inf"), device=dev)
    for r0 in range(0, max(1, len(order)), budget):
        idx = order[r0 : r0 + budget]
        chunks = [ids[i] for i in idx]
        ks, vs, pos, masks = [], [], [], []
        if r0 == 0:
            ks, vs, pos = edge_k, edge_v, [edge_pos]
            masks = [torch.ones(lay.rows, ns + w, dtype=torch.bool, device=dev)]
        if chunks:
            k, v = store._gpu.gather(store._fetch(layer, chunks))  # [R, len*C, D]
            starts = torch.tensor([lay.chunk_start(j) for j in chunks], device=dev)
            ks, vs = [*ks, k], [*vs, v]
            pos.append((starts[:, None] + torch.arange(lay.chunk, device=dev)).reshape(-1))
            if row_has is not None:  # [R, len*C], from per-chunk or (token selection) per-token rows
                per_token = row_has.shape[1] != len(ids)
                cols = torch.tensor(idx, device=dev)
                if per_token:
                    cols = (cols[:, None] * lay.chunk + torch.arange(lay.chunk, device=dev)).reshape(-1)
                has = row_has[:, cols]
                masks.append(has if per_token else has.repeat_interleave(lay.chunk, dim=1))
        mask = torch.cat(masks, dim=1) if row_has is not None and chunks else None
        o, l_ = partial_attention(qr, torch.cat(ks, dim=1), torch.cat(vs, dim=1), torch.cat(pos),
                                  qpos, scaling, sliding_window, mask)  # fmt: skip
        out, lse = merge_partials(out, lse, o, l_)
        if want_mass and chunks:
            row_mask = masks[-1] if row_has is not None else None
            chunk_lse[:, :, idx] = _chunk_lse(store, qr, k, scaling, row_mask)
        store._xfer.mark_used(layer)
        mgr.release(layer)
    res = from_rows(out, store.batch, q.dtype)
    if want_mass:  # mass of chunk c on row r: sum over the group of exp(lse_c - lse)
        mass = torch.exp(chunk_lse - lse[:, :, :1]).sum(1)  # [R, len(ids)]
        cols = torch.tensor(ids, dtype=torch.long, device=dev).expand(lay.rows, -1)
        return res, (cols, mass)
    return res


def _chunk_lse(store, qr, k, scaling, row_mask):
    """Per-chunk log-sum-exp of one query's scores (h2o's mass): qr [R, g, 1, D], k [R, n*C, D],
    row_mask bool [R, n*C] or None -> [R, g, n]."""
    r, g = qr.shape[:2]
    s = torch.matmul(qr[:, :, 0].float(), k.float().transpose(-1, -2)) * scaling  # [R, g, n*C]
    if row_mask is not None:
        s = s.masked_fill(~row_mask[:, None, :], float("-inf"))
    return torch.logsumexp(s.view(r, g, -1, store.layout.chunk), dim=-1)  # [R, g, n]


def _union(store, layer: int, select):
    """(chunk ids to fetch, per-row membership bool [R, len(ids)] or None; a token selection's
    membership is per token, [R, len(ids) * C])."""
    m = store._mgr.n_chunks(layer)
    if select is None:
        return list(range(m)), None
    sel = torch.as_tensor(select, dtype=torch.long).to("cpu")
    if sel.dim() != 2 or sel.shape[0] not in (store.n_kv_heads, store.layout.rows):
        raise ValueError(f"select must be [Hkv, k] or [B*Hkv, k], got {tuple(sel.shape)}")
    if sel.shape[0] != store.layout.rows:
        sel = sel.repeat(store.batch, 1)  # same selection for every sequence of the batch
    c = store.layout.chunk
    tokens = store._sel is not None and store._sel.tokens
    chunk_of = torch.where(sel >= 0, torch.div(sel, c, rounding_mode="floor"), -1) if tokens else sel
    ids = sorted(set(chunk_of[chunk_of >= 0].tolist()))
    if ids and ids[-1] >= m:
        what = f"token {int(sel.max())} (chunk {ids[-1]})" if tokens else f"chunk {ids[-1]}"
        raise IndexError(f"select names {what}, layer {layer} has {m} chunks")
    union = torch.tensor(ids, dtype=torch.long)
    if not tokens:
        return ids, (sel[:, :, None] == union).any(dim=1).to(store.device)
    # token t of chunk ids[i] is column i*C + t % C
    col = torch.searchsorted(union, chunk_of.clamp(min=0)) * c + sel.clamp(min=0) % c
    row_has = torch.zeros(sel.shape[0], len(ids) * c, dtype=torch.bool)
    valid = sel >= 0
    row_has[torch.arange(sel.shape[0])[:, None].expand_as(sel)[valid], col[valid]] = True
    return ids, row_has.to(store.device)
