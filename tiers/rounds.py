"""Exact attention over a `TieredKVStore`'s layer in rounds: the fallback of every path.

Sinks + window + any set of body chunks (every chunk, or a selection per KV head: [R, k] ids, -1 =
none, of chunks or of body tokens when the selector picks tokens) go through the layer's GPU slots
in rounds of at most its slot budget (resident chunks first, then misses fetched from host or
disk), each round a partial softmax merged by log-sum-exp (`attention.py`), so a budget smaller
than the context still gives the exact result. A selection is fetched as one union, each row masked
to its own units. Reads the store only through its public view. Shapes: R = batch * Hkv rows, g
query heads per KV head, C tokens per chunk, D head dim.
"""

from __future__ import annotations

import torch

from offload.kernels.dispatch import causal_prefill_attention

from .attention import from_rows, merge_partials, partial_attention, to_rows

__all__ = ["attend_rounds"]


def attend_rounds(store, layer, q, scaling, sliding_window, select, want_mass: bool = False,
                  want_lse: bool = False):  # fmt: skip
    """Exact attention of q [B, H, Lq, D] over sinks + window + the chunks `select` names (None =
    every body chunk; ids of body tokens when the selector picks tokens) in rounds (module doc).
    Returns [B, Lq, H, D]; want_lse (a selection given): (that, its log-sum-exp [R, g, Lq]);
    want_mass (one query, a selection given) also returns (ids [R, n] long, mass per row on each
    of them [R, n]) for h2o: (out, (ids, mass))."""
    lay, n, lq = store.layout, store.layer_len(layer), q.shape[2]
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
    ns, w, m = lay.sink_len(n), lay.window_len(n), store.n_chunks(layer)
    e = store.edge(layer)
    edge_k = [e[0, :, :ns], e[0, :, lay.sinks : lay.sinks + w]]  # [R, *, D] each
    edge_v = [e[1, :, :ns], e[1, :, lay.sinks : lay.sinks + w]]
    edge_pos = torch.cat([torch.arange(ns), torch.arange(w) + lay.chunk_start(m)]).to(dev)
    budget = store.slot_budget(layer)
    shape = (store.batch, store.n_kv_heads, n, -1)
    if row_has is None and len(ids) == m and m <= budget and not want_lse:  # whole layer, one round:
        k, v = store.pool.gather(store.pin(layer, ids))  # chunks in position order
        k = torch.cat([edge_k[0], k, edge_k[1]], dim=1).reshape(shape)
        v = torch.cat([edge_v[0], v, edge_v[1]], dim=1).reshape(shape)
        out = causal_prefill_attention(q, k, v, scaling, sliding_window)  # positions 0..n-1: plain SDPA
        store.done(layer, pinned=True)
        return out
    order = sorted(range(len(ids)), key=lambda i: not store.is_resident(layer, ids[i]))
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
            k, v = store.pool.gather(store.pin(layer, chunks))  # [R, len*C, D]
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
        store.done(layer, pinned=True)
    res = from_rows(out, store.batch, q.dtype)
    if want_lse:
        res = (res, lse)
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
    m = store.n_chunks(layer)
    if select is None:
        return list(range(m)), None
    sel = torch.as_tensor(select, dtype=torch.long).to("cpu")
    if sel.dim() != 2 or sel.shape[0] not in (store.n_kv_heads, store.layout.rows):
        raise ValueError(f"select must be [Hkv, k] or [B*Hkv, k], got {tuple(sel.shape)}")
    if sel.shape[0] != store.layout.rows:
        sel = sel.repeat(store.batch, 1)  # same selection for every sequence of the batch
    c = store.layout.chunk
    tokens = store.selector is not None and store.selector.tokens
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
