"""Chunk gather: the Triton copy kernel (interpreted on CPU) must equal index_copy bit for bit."""

import pytest
import torch

from offload.kernels.chunk_gather import gather_chunks_triton
from offload.kernels.reference import gather_chunks_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("chunk_shape, block", [((2, 16, 64), 1024), ((3, 5, 24), 128)])
def test_matches_index_copy(dtype, chunk_shape, block):
    g = torch.Generator().manual_seed(0)
    src = (torch.randn(9, *chunk_shape, generator=g) * 50).to(dtype)
    dst = torch.zeros(6, *chunk_shape, dtype=dtype)
    want = dst.clone()
    ids = torch.tensor([8, 0, 3, 5], dtype=torch.int64)
    slots = torch.tensor([1, 5, 0, 3], dtype=torch.int32)
    gather_chunks_triton(src, ids, dst, slots, block=block)  # 3*5*24 = 360: a partial last block
    gather_chunks_ref(src, ids, want, slots)
    assert torch.equal(dst.view(torch.uint8), want.view(torch.uint8))


def test_pools_as_layer_views_of_bigger_buffers():
    """Pools [N, L, Hkv, C, D] read per layer: chunks contiguous, stride between chunks larger."""
    src_all = torch.randn(7, 3, 2, 8, 16)
    dst_all = torch.zeros(4, 3, 2, 8, 16)
    want = dst_all.clone()
    ids, slots = torch.tensor([6, 2]), torch.tensor([3, 0])
    gather_chunks_triton(src_all[:, 1], ids, dst_all[:, 1], slots, block=256)
    gather_chunks_ref(src_all[:, 1], ids, want[:, 1], slots)
    assert torch.equal(dst_all, want)


def test_nothing_to_copy():
    dst = torch.zeros(2, 4)
    empty = torch.zeros(0, dtype=torch.int32)
    assert gather_chunks_triton(torch.ones(3, 4), empty, dst, empty) is dst and not dst.any()


def test_bad_inputs_raise():
    src, dst = torch.randn(4, 2, 8), torch.zeros(3, 2, 8)
    ids, slots = torch.tensor([0, 1]), torch.tensor([2, 0])
    with pytest.raises(TypeError, match="share a dtype"):
        gather_chunks_triton(src.half(), ids, dst, slots)
    with pytest.raises(ValueError, match="chunks of one shape"):
        gather_chunks_triton(src[:, :, :4].contiguous(), ids, dst, slots)
    with pytest.raises(ValueError, match="must each be contiguous"):
        gather_chunks_triton(src.transpose(1, 2).contiguous().transpose(1, 2), ids, dst, slots)
    with pytest.raises(TypeError, match="src_ids"):
        gather_chunks_triton(src, ids.float(), dst, slots)
    with pytest.raises(ValueError, match="dst_slots must have shape"):
        gather_chunks_triton(src, ids, dst, slots[:1])
