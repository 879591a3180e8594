"""Plain-torch specs of every kernel in this package, and the code that runs them on CPU.

Each function here is the definition its Triton twin (if it has one) is tested against (invariant 3)
and is itself tested against a brute-force loop. They are vectorised (no Python loop over tokens or
heads), so the CPU engine runs them in production through `offload.kernels.dispatch`.

Shapes: B batch, H query heads, Hkv KV heads, G = H // Hkv query heads per KV head (head h reads KV
head h // G, as HF's repeat_kv), D head dim, S pool slots, C tokens per chunk, M block-table width,
E extra (sinks + window) capacity, n chunks, r low-rank dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "sparse_decode_attention_ref",
    "token_decode_attention_ref",
    "chunk_score_ref",
    "top_chunks_ref",
    "prefill_attention_ref",
    "merge_attention_ref",
]


def _pool_rows(pool: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """pool [S, n_rows, C, D] as a [N, C, D] view of its (slot, row) chunks and the step between
    slots in that view (row r of slot s is entry s*step + r), or None when the strides do not allow
    it. A view of GpuPool.kv[:, 0] ([S, 2, R, C, D] storage) has step 2R: k and v rows interleave."""
    s0, s1, s2, s3 = pool.stride()
    n_slots, n_rows, chunk, d = pool.shape
    if s3 != 1 or s2 != d or s1 != chunk * d or s0 % s1 or n_slots == 0:
        return None
    step = s0 // s1
    # the view ends at the last slot's last row: never past the storage of a k or v half
    return torch.as_strided(pool, ((n_slots - 1) * step + n_rows, chunk, d), (s1, s2, s3)), step


def _row_of_head(b: int, n_kv: int, n_rows: int, device) -> torch.Tensor:
    """Pool row of each (sequence, KV head), [B or 1, Hkv, 1]: h, or b*Hkv + h when a slot holds
    every sequence's rows (n_rows = B*Hkv)."""
    heads = torch.arange(n_kv, device=device)[None, :, None]
    if n_rows != n_kv:
        heads = heads + n_kv * torch.arange(b, device=device)[:, None, None]
    return heads


def _gather_selection(k_pool: torch.Tensor, block_table: torch.Tensor, body_len: torch.Tensor):
    """Tokens a block table selects: k_sel [B, Hkv, M*C, D] and a validity mask [B, Hkv, M*C]
    (None when every row's body_len is M*C: nothing to mask).

    Token j of row (b, h) sits in slot block_table[b, h, j // C] at row j % C; j < body_len[b, h].
    Entries past ceil(body_len / C) may hold anything: they are clamped to a valid slot and masked.
    k_pool: [S, Hkv, C, D], or [S, B*Hkv, C, D] (a slot holds every sequence's rows: row b*Hkv + h).
    """
    n_slots, n_rows, chunk, d = k_pool.shape
    b, n_kv, width = block_table.shape
    slots = block_table.long().clamp(0, n_slots - 1)  # [B, Hkv, M]
    heads = _row_of_head(b, n_kv, n_rows, k_pool.device)
    flat = _pool_rows(k_pool)
    if flat is not None:  # one index_select of whole [C, D] chunks: a memcpy per chunk
        rows, step = flat
        k_sel = rows.index_select(0, (slots * step + heads).reshape(-1))
    else:
        k_sel = k_pool[slots, heads]  # [B, Hkv, M, C, D]
    k_sel = k_sel.reshape(b, n_kv, width * chunk, d)
    full = width * chunk
    if body_len.numel() and bool((body_len == full).all()):
        return k_sel, None
    pos = torch.arange(full, device=k_pool.device)
    return k_sel, pos[None, None, :] < body_len.long()[..., None]


def sparse_decode_attention_ref(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    body_len: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_len: torch.Tensor | None = None,
    scale: float | None = None,
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention of one query token per sequence over a sparse selection plus extra tokens.

    q: [B, H, D]. k_pool, v_pool: [S, Hkv, C, D], the GPU pool (one chunk of every KV head per slot),
    or [S, B*Hkv, C, D] when a slot holds the chunk of every sequence (row b*Hkv + h; tiers' layout).
    block_table: [B, Hkv, M] int slot ids; body_len: [B, Hkv] int selected tokens per row (the last
    chunk may be partial: its first body_len % C rows count). extra_k, extra_v: [B, Hkv, E, D] with
    extra_len [B]: sinks + recent window in any order (softmax does not care), first extra_len[b] valid.
    Returns out [B, H, D] in q.dtype and lse [B, H] fp32 (natural log of the softmax denominator,
    -inf and out = 0 when a row attends to nothing). upcast=False computes in the input dtype: the
    low-precision baseline of the error rule.
    """
    k_sel, keep = _gather_selection(k_pool, block_table, body_len)
    v_sel, _ = _gather_selection(v_pool, block_table, body_len)
    return _attend_selected(q, k_sel, v_sel, keep, extra_k, extra_v, extra_len, scale, upcast)


def _attend_selected(q, k_sel, v_sel, keep, extra_k, extra_v, extra_len, scale, upcast):
    """The decode attention both sparse specs share, over selected k_sel, v_sel [B, Hkv, N, D] (keep
    [B, Hkv, N] bool, None = all) plus the extra tokens; returns (out [B, H, D], lse [B, H])."""
    b, h, d = q.shape
    n_kv = k_sel.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    cdt = torch.float32 if upcast else q.dtype
    if extra_k is not None:
        n_extra = extra_k.shape[2]
        k_sel = torch.cat([k_sel, extra_k], dim=2)
        v_sel = torch.cat([v_sel, extra_v], dim=2)
        if keep is not None or bool((extra_len != n_extra).any()):
            body = keep if keep is not None else torch.ones(b, n_kv, k_sel.shape[2] - n_extra,
                                                            dtype=torch.bool, device=q.device)  # fmt: skip
            pos = torch.arange(n_extra, device=q.device)
            extra = (pos[None, :] < extra_len.long()[:, None])[:, None, :].expand(b, n_kv, -1)
            keep = torch.cat([body, extra], 2)
    qg = q.reshape(b, n_kv, h // n_kv, d).to(cdt)  # [B, Hkv, G, D]
    s = torch.matmul(qg, k_sel.to(cdt).transpose(-1, -2)) * scale  # [B, Hkv, G, N]
    if keep is not None:
        s = s.masked_fill(~keep[:, :, None, :], float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)  # [B, Hkv, G]
    # exp(s - lse) is nan on empty rows (-inf - -inf): zero those weights so out = 0
    p = torch.exp(s.float() - lse[..., None]).nan_to_num(0.0).to(cdt)
    out = torch.matmul(p, v_sel.to(cdt))  # [B, Hkv, G, D]
    return out.reshape(b, h, d).to(q.dtype), lse.reshape(b, h)


def token_decode_attention_ref(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    chunk_slot: torch.Tensor,
    token_ids: torch.Tensor,
    row_len: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_len: torch.Tensor | None = None,
    scale: float | None = None,
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention of one query token per sequence over single selected tokens plus extra tokens.

    q: [B, H, D]. k_pool, v_pool: [S, R, C, D], tiers' pool (a slot holds a chunk of C tokens of every
    row; R = B*Hkv rows, row b*Hkv + h). chunk_slot: [M] int, the slot of each body chunk of the layer.
    token_ids: [R, K] int body positions in any order: token t is at offset t % C of slot
    chunk_slot[t // C], row r. row_len: [R] int, how many leading ids row r attends (0..K; the rest
    may be garbage such as -1 and are never read). extra_k, extra_v, extra_len, scale, upcast and the
    results (out [B, H, D] in q.dtype, lse [B, H] fp32): as `sparse_decode_attention_ref`.
    """
    n_rows, width = token_ids.shape
    chunk, d = k_pool.shape[2:]
    keep = torch.arange(width, device=q.device) < row_len.long()[:, None]  # [R, K]
    ids = token_ids.long().masked_fill(~keep, 0)  # garbage past row_len: a real token, masked out
    slots = chunk_slot.long()[ids // chunk] if chunk_slot.numel() else torch.zeros_like(ids)
    rows = torch.arange(n_rows, device=q.device)[:, None]
    shape = (q.shape[0], n_rows // q.shape[0], width, d)  # [B, Hkv, K, D]
    k_sel = k_pool[slots, rows, ids % chunk].reshape(shape)  # [R, K, D] gathered
    v_sel = v_pool[slots, rows, ids % chunk].reshape(shape)
    return _attend_selected(q, k_sel, v_sel, keep.reshape(shape[:3]), extra_k, extra_v, extra_len, scale, upcast)


def merge_attention_ref(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets from each one's (out, lse), as returned by
    `sparse_decode_attention_ref`: out [..., D], lse [...] fp32 natural log. Empty sides (lse = -inf)
    contribute nothing; both empty gives out = 0, lse = -inf."""
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # -inf - -inf would be nan
    w_a = torch.exp(lse_a - safe)[..., None]
    w_b = torch.exp(lse_b - safe)[..., None]
    out = w_a * out_a.float() + w_b * out_b.float()
    return out.to(out_a.dtype), lse


def chunk_score_ref(
    q: torch.Tensor,
    kmin: torch.Tensor,
    kmax: torch.Tensor,
    basis: torch.Tensor | None = None,
    res_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upper bound of each chunk's best q.k per KV head (max over the group's query heads), fp32.

    Quest (basis None): kmin, kmax [Bk, Hkv, n, D] per-channel key min/max (Bk is 1 or B);
        bound = sum_i max(q_i kmin_i, q_i kmax_i) = relu(q).kmax + min(q, 0).kmin.
    Low rank: basis [Hkv, D, r] orthonormal columns; kmin, kmax [Bk, Hkv, n, r] min/max of P^T k;
        res_max [Bk, Hkv, n] max ||k - P P^T k||; with q~ = P^T q and q_res = q - P q~,
        bound = relu(q~).kmax + min(q~, 0).kmin + ||q_res|| res_max,
        valid because q.k = q~.k~ + q_res.k_res and q_res.k_res <= ||q_res|| ||k_res||.
    q: [B, H, D]. Returns [B, Hkv, n] fp32, unscaled (ranking does not need the softmax scale).
    """
    b, h, d = q.shape
    n_kv = kmin.shape[1]
    qg = q.float().reshape(b, n_kv, h // n_kv, d)  # [B, Hkv, G, D]
    if basis is not None:
        p = basis.float()  # [Hkv, D, r]
        q_low = torch.matmul(qg, p)  # [B, Hkv, G, r] (matmul, not einsum: ~4x less overhead per call)
        q_res = qg - torch.matmul(q_low, p.transpose(-1, -2))
        qg = q_low
    bound = torch.matmul(qg.clamp(min=0), kmax.float().transpose(-1, -2))  # [B, Hkv, G, n]
    bound = bound + torch.matmul(qg.clamp(max=0), kmin.float().transpose(-1, -2))
    if basis is not None:
        bound = bound + q_res.norm(dim=-1)[..., None] * res_max.float()[:, :, None, :]
    return bound.amax(dim=2)


def top_chunks_ref(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, Hkv, k] (int32, unordered) of the k highest scores [B, Hkv, n] per KV head."""
    return torch.topk(scores, k, dim=-1, sorted=False).indices.to(torch.int32)


def prefill_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of a query chunk over the layer's KV, bottom-right aligned, with GQA.

    q: [B, H, Lq, D] (query i sits at key position Lk - Lq + i); k, v: [B, Hkv, Lk, D], Lk >= Lq.
    sliding_window w keeps keys with qpos - w < kpos <= qpos (HF's convention). Returns
    [B, Lq, H, D] contiguous in q.dtype (HF's attention-interface layout). torch SDPA with an
    explicit mask: this is the production path on every device.
    """
    lq, lk = q.shape[2], k.shape[2]
    keep = None  # one query with nothing windowed out sees every key: no mask, SDPA's fast path
    if lq > 1 or (sliding_window is not None and lk > sliding_window):
        qpos = torch.arange(lk - lq, lk, device=q.device)[:, None]
        kpos = torch.arange(lk, device=q.device)[None, :]
        keep = kpos <= qpos  # [Lq, Lk]
        if sliding_window is not None:
            keep = keep & (kpos > qpos - sliding_window)
    groups = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(
        q, k.to(q.dtype), v.to(q.dtype), attn_mask=keep, scale=scale, enable_gqa=groups > 1
    )
    return out.transpose(1, 2).contiguous()

