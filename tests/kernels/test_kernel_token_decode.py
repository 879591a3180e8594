"""Token-gather sparse decode attention: the Triton kernel (interpreted on CPU; compiled on a GPU with
OFFLOAD_KERNEL_DEVICE=cuda TRITON_INTERPRET=0, as bench/gpu_check.sh runs the kernel tests) against its
torch reference, and the reference against a gather written out by hand."""

import math
import os

import pytest
import torch

from offload.kernels.reference import token_decode_attention_ref
from offload.kernels.token_decode import token_decode_attention_triton as _kernel

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DEVICE = torch.device(os.environ.get("OFFLOAD_KERNEL_DEVICE", "cpu"))


def token_decode_attention_triton(*args, **launch):
    """The kernel on DEVICE (inputs moved there), its results back on the CPU."""
    moved = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    out, lse = _kernel(*moved, **launch)
    return out.cpu(), lse.cpu()


def make_case(b, n_kv, group, d, dtype, chunk, n_chunks, width, lens, n_extra, extra_len, seed=0, repeat=False):
    """Random pools [S, B*Hkv, C, D], the layer's chunks in random distinct slots, and per row its first
    lens[r] token ids in random order (distinct, or drawn with repeats), -1 after them (garbage the
    kernel must never read). extra_len: [B] or None (no extra tokens)."""
    g = torch.Generator().manual_seed(seed)
    n_rows, n_slots = b * n_kv, n_chunks + 3
    q = torch.randn(b, n_kv * group, d, generator=g).to(dtype)
    k_pool = torch.randn(n_slots, n_rows, chunk, d, generator=g).to(dtype)
    v_pool = torch.randn(n_slots, n_rows, chunk, d, generator=g).to(dtype)
    chunk_slot = torch.randperm(n_slots, generator=g)[:n_chunks].to(torch.int32)
    token_ids = torch.full((n_rows, width), -1, dtype=torch.int32)
    for r, n in enumerate(lens):
        if repeat:
            token_ids[r, :n] = torch.randint(0, n_chunks * chunk, (n,), generator=g)
        else:
            token_ids[r, :n] = torch.randperm(n_chunks * chunk, generator=g)[:n]
    row_len = torch.tensor(lens, dtype=torch.int32)
    extra = (None, None, None)
    if extra_len is not None:
        extra = (
            torch.randn(b, n_kv, n_extra, d, generator=g).to(dtype),
            torch.randn(b, n_kv, n_extra, d, generator=g).to(dtype),
            torch.tensor(extra_len, dtype=torch.int32),
        )
    return (q, k_pool, v_pool, chunk_slot, token_ids, row_len, *extra)


def check(args, error_rule, **launch):
    """The kernel against the reference (fp32, and in the input dtype for the error rule's baseline),
    on the args' own device (views built on DEVICE keep their strides there)."""
    dtype = args[0].dtype
    out, lse = token_decode_attention_triton(*args, **launch)
    assert out.dtype == dtype and out.shape == args[0].shape and lse.dtype == F32
    assert lse.shape == args[0].shape[:2]
    ref_out, ref_lse = (t.cpu() for t in token_decode_attention_ref(*args))
    lp_out, lp_lse = (t.cpu() for t in token_decode_attention_ref(*args, upcast=False))
    error_rule(out, ref_out, lp_out, dtype)
    error_rule(lse, ref_lse, lp_lse, dtype, what="lse")


def _cases():
    """Every group x head dim x dtype, with batch, KV heads, chunk, splits, block and lengths rotating
    so each also meets batch 1 and 2, one and several splits, extra or none, repeats or none. Row
    lengths differ and are not multiples of the block (16/32/64); some rows select nothing."""
    cases = []
    i = 0
    for group in (1, 3, 4, 8):
        for d in (64, 128, 256):
            for dtype in (F32, F16, BF16):
                b, n_kv, chunk = 1 + i % 2, 1 + (i // 2) % 2, (16, 32, 64)[i % 3]
                width = 70 + i % 11
                n_chunks = -(-width // chunk) + i % 3  # few chunks: many tokens of one chunk per row
                lens = [(29 * (i + r) + 7) % (width + 1) for r in range(b * n_kv)]
                if i % 5 == 0:
                    lens[-1] = 0
                n_extra = 3 + i % 7
                extra = [n_extra - j for j in range(b)] if i % 6 else None
                launch = dict(num_splits=(1, 2, 3)[i % 3], block_n=(16, 32, None)[(i // 3) % 3])
                shape = (b, n_kv, group, d, dtype, chunk, n_chunks, width, lens, n_extra, extra, i, i % 4 == 1)
                cases.append((shape, launch))
                i += 1
    return cases


CASES = _cases()
IDS = [f"b{s[0]}g{s[2]}d{s[3]}-{str(s[4])[6:]}-s{launch['num_splits']}" for s, launch in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference(case, error_rule):
    shape, launch = case
    check(make_case(*shape), error_rule, **launch)


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_no_ids_sinks_and_window_only(dtype, error_rule):
    args = make_case(2, 2, 4, 64, dtype, 16, 3, 5, [0, 0, 0, 0], 21, [21, 6])
    check(args, error_rule, num_splits=2, block_n=16)  # a split of batch 1 gets no token: lse -inf merge
    q, k_pool, v_pool, _, _, row_len, *extra = args
    empty = (q, k_pool, v_pool, torch.zeros(0, dtype=torch.int32), torch.zeros(4, 0, dtype=torch.int32), row_len)
    check((*empty, *extra), error_rule, num_splits=1, block_n=16)  # a layer with no body chunks yet


def test_row_with_nothing_gives_zero_and_minus_inf():
    args = make_case(2, 1, 3, 64, F32, 16, 2, 24, [0, 20], 4, [0, 4])
    for splits in (1, 2):
        out, lse = token_decode_attention_triton(*args, num_splits=splits, block_n=16)
        assert torch.all(out[0] == 0) and torch.all(lse[0] == float("-inf"))
        assert torch.isfinite(lse[1]).all()


def test_reads_the_pool_as_a_gathered_buffer():
    """The expected result built without the reference: each row's tokens gathered one by one by
    (slot, offset), its extra tokens appended, a plain softmax per query head."""
    b, n_kv, group, d, chunk = 2, 2, 3, 64, 16
    args = make_case(b, n_kv, group, d, F32, chunk, 4, 30, [30, 11, 0, 25], 6, [6, 2], seed=3, repeat=True)
    q, k_pool, v_pool, chunk_slot, token_ids, row_len, xk, xv, xl = args
    want_out, want_lse = torch.zeros(b, n_kv * group, d), torch.full((b, n_kv * group), float("-inf"))
    for r in range(b * n_kv):
        i, h = divmod(r, n_kv)
        toks = token_ids[r, : row_len[r]].long()
        slots = chunk_slot.long()[toks // chunk]
        keys = torch.cat([k_pool[slots, r, toks % chunk], xk[i, h, : xl[i]]])  # [n, D]
        vals = torch.cat([v_pool[slots, r, toks % chunk], xv[i, h, : xl[i]]])
        heads = slice(h * group, (h + 1) * group)
        scores = q[i, heads] @ keys.T / math.sqrt(d)  # [G, n]
        want_out[i, heads] = torch.softmax(scores, dim=-1) @ vals
        want_lse[i, heads] = torch.logsumexp(scores, dim=-1)
    for got in (token_decode_attention_triton(*args, num_splits=2, block_n=16), token_decode_attention_ref(*args)):
        torch.testing.assert_close(got[0], want_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], want_lse, rtol=1e-5, atol=1e-5)


def test_strided_views_and_int64_ids(error_rule):
    """Pools as views of one [S, 2, R, C, D] buffer (tiers' GpuPool.kv), q as the query part of a fused
    qkv projection, ids and chunk slots as int64 strided views; all made on DEVICE, so the compiled
    kernel meets these strides too."""
    q, k_pool, v_pool, chunk_slot, token_ids, row_len, xk, xv, xl = (t.to(DEVICE) for t in make_case(
        2, 2, 3, 64, F16, 16, 4, 40, [40, 3, 0, 21], 8, [8, 5], seed=5))
    kv = torch.stack([k_pool, v_pool], dim=1)  # [S, 2, R, C, D]
    qkv = torch.zeros(2, (6 + 2 * 2) * 64, dtype=F16, device=DEVICE)  # [B, (H + 2 Hkv) * D]
    q_view = qkv[:, : 6 * 64].view(2, 6, 64)
    q_view.copy_(q)
    ids = torch.full((4, 80), 7, dtype=torch.int64, device=DEVICE)
    ids[:, ::2] = token_ids.long()  # [R, K] with stride 2 along K
    slots = torch.full((8,), -5, dtype=torch.int64, device=DEVICE)
    slots[1::2] = chunk_slot.long()  # [M] with stride 2
    args = (q_view, kv[:, 0], kv[:, 1], slots[1::2], ids[:, ::2], row_len.long(), xk, xv, xl.long())
    assert q_view.stride(0) == 10 * 64 and args[1].stride(0) == 2 * 4 * 16 * 64 and args[4].stride(1) == 2
    check(args, error_rule, num_splits=3, block_n=16)


def test_default_launch_heuristics(error_rule):
    check(make_case(1, 2, 4, 128, F16, 64, 4, 150, [150, 129], 12, [12]), error_rule)


def test_bad_inputs_raise():
    q, k_pool, v_pool, slots, ids, row_len, xk, xv, xl = make_case(1, 2, 2, 64, F16, 16, 2, 8, [8, 5], 4, [4])
    base = (q, k_pool, v_pool, slots, ids, row_len)

    def raises(err, match, *args, **launch):
        with pytest.raises(err, match=match):
            token_decode_attention_triton(*args, **launch)

    raises(TypeError, "k_pool", q, k_pool.float(), *base[2:])
    raises(TypeError, "chunk_slot", *base[:3], slots.float(), ids, row_len)
    raises(TypeError, "token_ids", *base[:4], ids.float(), row_len)
    raises(TypeError, "row_len", *base[:5], row_len.float())
    raises(ValueError, "rows per slot", q[:, :3], *base[1:])
    raises(ValueError, "rows per slot", q.repeat(3, 1, 1), *base[1:])  # 2 rows for 3 sequences
    raises(ValueError, "v_pool must have shape", q, k_pool, v_pool[:, :, :8], *base[3:])
    raises(ValueError, "last dimension", q, k_pool, v_pool.transpose(-1, -2).contiguous().transpose(-1, -2),
           *base[3:])
    raises(ValueError, "token_ids must have shape", *base[:4], ids[:1], row_len)
    raises(ValueError, "row_len must have shape", *base[:5], row_len[:, None])
    raises(ValueError, "go together", *base, xk, xv)
    raises(ValueError, "extra_len must have shape", *base, xk, xv, xl.repeat(2))
    raises(TypeError, "extra_v", *base, xk, xv.float(), xl)
    raises(ValueError, "block_n", *base, block_n=24)
    raises(ValueError, "num_splits", *base, num_splits=65)


def test_reads_a_token_cache_through_its_pool_views(error_rule):
    """The token cache's slots as the kernel's pool (tiers/token_cache.py `pool_views`: k, v [N, R, 1, D]
    with row stride 0, the identity slot map, slots as ids): the kernel gives attention over each row's
    slots' rows, as the reference does over the same rows gathered into an ordinary pool."""
    from offload.tiers.token_cache import TokenCache

    b, n_kv, group, d, n = 1, 3, 4, 64, 50
    g = torch.Generator().manual_seed(11)
    cache = TokenCache(1, n, d, F16, DEVICE)
    rows = torch.randn(2, n, d, generator=g).to(F16)
    cache.write(torch.randperm(n, generator=g).to(DEVICE), rows.to(DEVICE))
    lens = [20, 0, 33]
    slots = torch.full((b * n_kv, 33), -1, dtype=torch.long)
    for r, m in enumerate(lens):
        slots[r, :m] = torch.randperm(n, generator=g)[:m]
    q = torch.randn(b, n_kv * group, d, generator=g).to(F16)
    xk, xv = (torch.randn(b, n_kv, 5, d, generator=g).to(F16) for _ in range(2))
    extra = (xk, xv, torch.tensor([5], dtype=torch.int32))
    k_view, v_view, ident = cache.pool_views(b * n_kv)
    assert k_view.shape == (n, b * n_kv, 1, d) and k_view.stride(1) == 0
    row_len = torch.tensor(lens, dtype=torch.int32)
    args = (q.to(DEVICE), k_view, v_view, ident, slots.to(DEVICE), row_len.to(DEVICE), *(t.to(DEVICE) for t in extra))
    out, lse = _kernel(*args, num_splits=2, block_n=16)
    held = cache.kv.cpu()  # [2, N, D]: the rows as written, one pool entry per (slot, row)
    pool = held[:, :, None, None, :].expand(2, n, b * n_kv, 1, d).contiguous()
    want = token_decode_attention_ref(q, pool[0], pool[1], torch.arange(n), slots, row_len, *extra)
    lp = token_decode_attention_ref(q, pool[0], pool[1], torch.arange(n), slots, row_len, *extra, upcast=False)
    error_rule(out.cpu(), want[0], lp[0], F16)
    error_rule(lse.cpu(), want[1], lp[1], F16, what="lse")
