"""Prefill attention: the Triton flash kernel (interpreted on CPU) against the SDPA reference."""

import pytest
import torch

from offload.kernels.prefill_attention import prefill_attention_triton
from offload.kernels.reference import prefill_attention_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def make_case(b, n_kv, group, d, lq, lk, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n_kv * group, lq, d, generator=g).to(dtype)
    k = torch.randn(b, n_kv, lk, d, generator=g).to(dtype)
    v = torch.randn(b, n_kv, lk, d, generator=g).to(dtype)
    return q, k, v


def check(q, k, v, error_rule, window=None, **launch):
    out = prefill_attention_triton(q, k, v, sliding_window=window, **launch)
    assert out.shape == (q.shape[0], q.shape[2], q.shape[1], q.shape[3]) and out.dtype == q.dtype
    ref32 = prefill_attention_ref(q, k, v, sliding_window=window, upcast=True)
    ref_lp = prefill_attention_ref(q, k, v, sliding_window=window)
    error_rule(out, ref32, ref_lp, q.dtype)


def _cases():
    """Group x head dim, dtypes, batch and window rotating; Lq < Lk (a chunk at an offset), Lq = Lk
    (the first chunk) and Lq = 1; lengths are not multiples of the blocks."""
    cases, i = [], 0
    for group in (1, 3, 4, 8):
        for d in (64, 128, 256):
            lq, lk = ((37, 101), (45, 45), (1, 77))[i % 3]
            cases.append((1 + i % 2, 1 if group == 8 else 2, group, d, lq, lk, (F32, F16, BF16)[i % 3],
                          (None, None, 19, 40)[i % 4]))
            i += 1
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}g{c[2]}d{c[3]}q{c[4]}k{c[5]}w{c[7]}" for c in CASES])
def test_matches_reference(case, error_rule):
    *shape, window = case
    check(*make_case(*shape), error_rule, window=window, block_m=32, block_n=32)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_default_blocks_and_hf_query_layout(dtype, error_rule):
    """HF hands q as a transposed view of [B, Lq, H, D]: strided, last dimension contiguous."""
    q, k, v = make_case(1, 2, 3, 64, 70, 150, dtype)
    check(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, error_rule, window=50)


def test_bad_inputs_raise():
    q, k, v = make_case(1, 2, 2, 64, 8, 16, F16)
    with pytest.raises(TypeError, match="v must have dtype"):
        prefill_attention_triton(q, k, v.float())
    with pytest.raises(ValueError, match="Lk >= Lq"):
        prefill_attention_triton(q, k[:, :, :4], v[:, :, :4])
    with pytest.raises(ValueError, match="multiple of KV heads"):
        prefill_attention_triton(q[:, :3], k, v)
    with pytest.raises(ValueError, match="sliding_window"):
        prefill_attention_triton(q, k, v, sliding_window=0)
    with pytest.raises(ValueError, match="k and v must share strides"):
        prefill_attention_triton(q, k, torch.cat([v, v], dim=2)[:, :, :16])
