"""Sparse decode attention: the Triton kernel (interpreted on CPU; compiled on a GPU with
OFFLOAD_KERNEL_DEVICE=cuda TRITON_INTERPRET=0, as bench/gpu_check.sh runs it) against its torch reference."""

import os

import pytest
import torch

from offload.kernels.reference import sparse_decode_attention_ref
from offload.kernels.sparse_decode import sparse_decode_attention_triton as _kernel

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DEVICE = torch.device(os.environ.get("OFFLOAD_KERNEL_DEVICE", "cpu"))


def sparse_decode_attention_triton(*args, **launch):
    """The kernel on DEVICE (inputs moved there), its results back on the CPU."""
    moved = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    out, lse = _kernel(*moved, **launch)
    return out.cpu(), lse.cpu()


def make_case(b, n_kv, group, d, dtype, chunk, width, body, n_extra, extra_len, seed=0, n_slots=None):
    """Random pools and a block table of distinct slots per row; entries past each row's chunks are -1
    (garbage the kernel must never read). body: [B][Hkv] token counts; extra_len: [B] or None."""
    g = torch.Generator().manual_seed(seed)
    n_slots = n_slots or width + 3
    q = torch.randn(b, n_kv * group, d, generator=g).to(dtype)
    k_pool = torch.randn(n_slots, n_kv, chunk, d, generator=g).to(dtype)
    v_pool = torch.randn(n_slots, n_kv, chunk, d, generator=g).to(dtype)
    body_len = torch.tensor(body, dtype=torch.int32).reshape(b, n_kv)
    table = torch.full((b, n_kv, width), -1, dtype=torch.int32)
    for i in range(b):
        for h in range(n_kv):
            used = -(-int(body_len[i, h]) // chunk)
            table[i, h, :used] = torch.randperm(n_slots, generator=g)[:used].to(torch.int32)
    extra = (None, None, None)
    if extra_len is not None:
        extra = (
            torch.randn(b, n_kv, n_extra, d, generator=g).to(dtype),
            torch.randn(b, n_kv, n_extra, d, generator=g).to(dtype),
            torch.tensor(extra_len, dtype=torch.int32),
        )
    return (q, k_pool, v_pool, table, body_len, *extra)


def check(args, error_rule, **launch):
    dtype = args[0].dtype
    out, lse = sparse_decode_attention_triton(*args, **launch)
    assert out.dtype == dtype and out.shape == args[0].shape and lse.dtype == F32
    ref_out, ref_lse = sparse_decode_attention_ref(*args)
    lp_out, lp_lse = sparse_decode_attention_ref(*args, upcast=False)
    error_rule(out, ref_out, lp_out, dtype)
    error_rule(lse, ref_lse, lp_lse, dtype, what="lse")


def _cases():
    """Every group x head dim x dtype, with batch, KV heads, chunk, splits, block and lengths rotating
    so each also meets batch 1 and 2 and one and several splits. Lengths are not multiples of the
    block (16/32/64) nor, mostly, of the chunk; one KV head of some rows selects nothing."""
    cases = []
    i = 0
    for group in (1, 3, 4, 8):
        for d in (64, 128, 256):
            for dtype in (F32, F16, BF16):
                b, n_kv, chunk = 1 + i % 2, 1 + (i // 2) % 2, (16, 32, 64)[i % 3]
                width = 4 if chunk < 64 else 3
                body = [(37 * (i + j) + 11) % (width * chunk + 1) for j in range(b * n_kv)]
                if i % 5 == 0:
                    body[-1] = 0
                n_extra = 3 + i % 7
                extra = [n_extra - j for j in range(b)] if i % 6 else None
                launch = dict(num_splits=(1, 2, 3)[i % 3], block_n=(16, 32, None)[(i // 3) % 3])
                cases.append((b, n_kv, group, d, dtype, chunk, width, body, n_extra, extra, launch))
                i += 1
    return cases


CASES = _cases()
IDS = [f"b{c[0]}g{c[2]}d{c[3]}-{str(c[4])[6:]}-s{c[10]['num_splits']}" for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference(case, error_rule):
    *shape, launch = case
    check(make_case(*shape), error_rule, **launch)


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_empty_body_sinks_and_window_only(dtype, error_rule):
    args = make_case(2, 2, 4, 64, dtype, 16, 3, [0, 0, 0, 0], 21, [21, 6])
    check(args, error_rule, num_splits=2, block_n=16)  # a split of row 2 gets no token: lse -inf merge


def test_row_with_nothing_gives_zero_and_minus_inf():
    args = make_case(2, 1, 3, 64, F32, 16, 2, [0, 20], 4, [0, 4])
    for splits in (1, 2):
        out, lse = sparse_decode_attention_triton(*args, num_splits=splits, block_n=16)
        assert torch.all(out[0] == 0) and torch.all(lse[0] == float("-inf"))
        assert torch.isfinite(lse[1]).all()


def test_strided_views_and_int64_tables(error_rule):
    """Pools as views of one [S, 2, Hkv, C, D] buffer, q as a slice of HF's [B, H, 1, D] layout."""
    q, k_pool, v_pool, table, body_len, xk, xv, xl = make_case(2, 2, 3, 64, F16, 16, 4, [50, 3, 64, 20], 8, [8, 5])
    kv = torch.stack([k_pool, v_pool], dim=1)  # [S, 2, Hkv, C, D]
    q_view = q[:, None].transpose(1, 2)[:, :, 0]  # non-contiguous batch stride pattern
    args = (q_view, kv[:, 0], kv[:, 1], table.long(), body_len.long(), xk, xv, xl.long())
    check(args, error_rule, num_splits=2, block_n=16)


def test_pool_rows_of_every_sequence(error_rule):
    """tiers' layout: a slot holds the chunk of every sequence, [S, B*Hkv, C, D], row b*Hkv + h.
    Sequence b must see exactly what a per-sequence pool [S, Hkv, C, D] (its rows) would give."""
    b, n_kv = 2, 2
    q, k_pool, v_pool, table, body_len, xk, xv, xl = make_case(b, n_kv, 3, 64, F16, 16, 4, [50, 3, 64, 20], 5,
                                                               [5, 2])
    g = torch.Generator().manual_seed(1)
    k_rows = torch.randn(k_pool.shape[0], b * n_kv, 16, 64, generator=g).to(F16)
    v_rows = torch.randn(k_pool.shape[0], b * n_kv, 16, 64, generator=g).to(F16)
    args = (q, k_rows, v_rows, table, body_len, xk, xv, xl)
    check(args, error_rule, num_splits=2, block_n=16)
    ref_out, ref_lse = sparse_decode_attention_ref(*args)
    for i in range(b):
        rows = slice(i * n_kv, (i + 1) * n_kv)
        one = (q[i:i + 1], k_rows[:, rows], v_rows[:, rows], table[i:i + 1], body_len[i:i + 1],
               xk[i:i + 1], xv[i:i + 1], xl[i:i + 1])
        out_i, lse_i = sparse_decode_attention_ref(*one)
        torch.testing.assert_close(out_i[0], ref_out[i], rtol=0, atol=0)
        torch.testing.assert_close(lse_i[0], ref_lse[i], rtol=0, atol=0)


def test_default_launch_heuristics(error_rule):
    check(make_case(1, 2, 4, 128, F16, 64, 4, [200, 129], 12, [12]), error_rule)


def test_bad_inputs_raise():
    q, k_pool, v_pool, table, body_len, xk, xv, xl = make_case(1, 2, 2, 64, F16, 16, 2, [20, 10], 4, [4])
    with pytest.raises(TypeError, match="k_pool"):
        sparse_decode_attention_triton(q, k_pool.float(), v_pool, table, body_len)
    with pytest.raises(TypeError, match="block_table"):
        sparse_decode_attention_triton(q, k_pool, v_pool, table.float(), body_len)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        sparse_decode_attention_triton(q[:, :3], k_pool, v_pool, table, body_len)
    with pytest.raises(ValueError, match="rows per slot"):
        sparse_decode_attention_triton(q, k_pool[:, :1], v_pool[:, :1], table, body_len)
    with pytest.raises(ValueError, match="v_pool must have shape"):
        sparse_decode_attention_triton(q, k_pool, v_pool[:, :, :8], table, body_len)
    with pytest.raises(ValueError, match="last dimension"):
        sparse_decode_attention_triton(q, k_pool, v_pool.transpose(-1, -2).contiguous().transpose(-1, -2),
                                       table, body_len)
    with pytest.raises(ValueError, match="go together"):
        sparse_decode_attention_triton(q, k_pool, v_pool, table, body_len, xk, xv)
    with pytest.raises(ValueError, match="extra_len must have shape"):
        sparse_decode_attention_triton(q, k_pool, v_pool, table, body_len, xk, xv, xl.repeat(2))


@pytest.mark.parametrize("dtype,batch,k", [(F32, 1, 3), (BF16, 2, 2), (F16, 1, 0)])
def test_what_the_store_hands_the_kernel(dtype, batch, k, error_rule):
    """The tiered store's sparse step passes views of its own buffers (pool [S, B*Hkv, C, D] with k
    and v interleaved per slot, sinks + window from the edge buffer, global slots as the block table),
    read through its public view: the kernel must read them as the reference does, a zero-width
    selection included."""
    from offload import OffloadConfig, SparseConfig
    from offload.tiers.decode_attention import kernel_args
    from offload.tiers.store import TieredKVStore

    g = torch.Generator().manual_seed(7)
    cfg = OffloadConfig(kv_chunk=16, sinks=4, window=16, sparse=SparseConfig(budget=64, whole_below=0))
    st = TieredKVStore(2, 2, 64, dtype, "cpu", config=cfg, batch=batch)
    for layer in range(2):
        kv = torch.randn(2, batch, 2, 150, 64, generator=g).to(dtype)
        st.append(layer, kv[0], kv[1])
    q = torch.randn(batch, 6, 1, 64, generator=g).to(dtype)
    m = st.n_chunks(1)
    assert m > k and st.all_resident(1)  # the kernel reads resident chunks only
    select = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(batch * 2)])  # [R, k]
    args = kernel_args(st, 1, q, select)
    assert args[3].shape == (batch, 2, max(k, 1)) and int(args[4].max()) == k * 16
    check(args, error_rule, num_splits=2, block_n=16)
    st.close()
