"""The CPU sparse-decode path against the reference: same outputs where it applies, None (reference
fallback) where it does not, and the dispatcher's answer equals the reference's either way."""

import pytest
import torch

from offload.kernels.dispatch import sparse_decode_attention
from offload.kernels.reference import sparse_decode_attention_ref
from offload.kernels.sparse_decode_cpu import sparse_decode_attention_cpu


def _case(b, n_kv, group, width, n_extra, shared_rows, seed=0, dtype=torch.float32):
    """Pools as the store lays them out (shared_rows: one slot holds every sequence's rows, k and v
    interleaved in one storage) or one [S, Hkv, C, D] pool per kind; distinct slots per row."""
    g = torch.Generator().manual_seed(seed)
    d, c, n_slots = 16, 4, width + 5
    rows = b * n_kv if shared_rows else n_kv
    kv = torch.randn(n_slots, 2, rows, c, d, generator=g).to(dtype)
    k_pool, v_pool = kv[:, 0], kv[:, 1]
    table = torch.stack([torch.randperm(n_slots, generator=g)[:width] for _ in range(b * n_kv)]).view(b, n_kv, width)
    q = torch.randn(b, n_kv * group, d, generator=g).to(dtype)
    body = torch.full((b, n_kv), width * c, dtype=torch.int32)
    extra = (torch.randn(b, n_kv, n_extra, d, generator=g).to(dtype), torch.randn(b, n_kv, n_extra, d, generator=g).to(dtype),
             torch.full((b,), n_extra, dtype=torch.int32))  # fmt: skip
    return [q, k_pool, v_pool, table, body, *extra]


@pytest.mark.parametrize("b, n_kv, group, width, n_extra, shared_rows",
                         [(1, 3, 3, 5, 7, True), (2, 2, 1, 3, 4, True), (2, 1, 4, 6, 0, False), (1, 2, 2, 1, 9, False)])  # fmt: skip
def test_matches_reference(b, n_kv, group, width, n_extra, shared_rows):
    args = _case(b, n_kv, group, width, n_extra, shared_rows)
    out, lse = sparse_decode_attention_cpu(*args, scale=0.3)
    ref_out, ref_lse = sparse_decode_attention_ref(*args, scale=0.3)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_bf16_pools_compute_in_fp32():
    args = _case(1, 2, 2, 4, 3, True, dtype=torch.bfloat16)
    out, lse = sparse_decode_attention_cpu(*args)
    ref_out, ref_lse = sparse_decode_attention_ref(*args)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)


@pytest.mark.parametrize("what", ["partial body", "short extras", "empty table"])
def test_other_cases_fall_back_to_the_reference(what):
    args = _case(2, 2, 2, 3, 5, True, seed=1)
    if what == "partial body":
        args[4][1, 0] = 5  # a partial last chunk needs a mask
    elif what == "short extras":
        args[7][0] = 2
    else:
        args[3] = args[3][:, :, :0]
        args[4] = torch.zeros_like(args[4])
    assert sparse_decode_attention_cpu(*args) is None
    out, lse = sparse_decode_attention(*args)  # the dispatcher: the reference's answer
    ref_out, ref_lse = sparse_decode_attention_ref(*args)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)
