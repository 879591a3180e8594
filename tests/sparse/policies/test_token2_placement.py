"""Where token2's summaries live (issue 25: a million tokens on a 24 GB GPU): block bounds in fp16 still
bound every token bound in their block; token sketches kept in host memory (`sketches="host"`) select
what device-resident ones select; the bytes each place holds, as the memory plan and the store spec
count them; bad placements are ConfigErrors."""

import pytest
import torch
from policy_checks import summarized
from test_token2 import _fill, _selector

from offload.config import OffloadConfig
from offload.errors import ConfigError
from offload.sparse import SparseConfig
from offload.sparse.block_bounds import BlockBounds, _bound, summary_dtype
from offload.sparse.policies.token import _HALF_STEP, Token, TwoLevel
from offload.store_spec import StoreSpec



@pytest.mark.parametrize("seed", range(4))
def test_fp16_block_bounds_still_bound_every_token_in_the_block(seed):
    g = torch.Generator().manual_seed(seed)
    n_kv, m, c, d, blk = 2, 24, 8, 64, 16
    keys = torch.randn(n_kv, m, c, d, generator=g) * torch.linspace(0.1, 30, d) + 3
    keys[:, 5, 3] *= 40  # an outlier key: wide boxes, large scales
    state = summarized(TwoLevel(rank=12, block=blk, fan=4), keys)
    n = m * c
    half = BlockBounds(1, 1, n_kv, state.rank, blk, "cpu", torch.float16, fan=state.blocks.fan)
    half.update(0, *state.sketches(0, n), 0, n)
    assert half.summary.dtype == torch.float16 and half.nbytes * 2 == state.blocks.nbytes
    basis = state.basis.basis[0]
    for _ in range(8):
        q = torch.randn(1, 4 * n_kv, d, generator=g) * 3
        exact = state.blocks.scores(0, q, basis, n // blk, _HALF_STEP)
        rounded = half.scores(0, q, basis, n // blk, _HALF_STEP)
        tokens = state.bound_and_mass(0, q, m, None, per_token=True)[0]
        per_block = tokens.reshape(1, n_kv, n // blk, blk).amax(-1)
        assert (rounded >= per_block - 1e-3 * per_block.abs().clamp(min=1)).all()
        assert torch.allclose(rounded, exact, rtol=5e-3, atol=5e-3 * exact.abs().max())  # barely looser
        for bounds in (state.blocks, half):  # a superblock bounds each of its blocks
            supers = _bound(bounds._row(q, basis, n_kv, _HALF_STEP), bounds.coarse[0, :, :, : n // blk // 4])
            inner = exact[..., : supers.shape[-1] * 4].reshape(1, n_kv, -1, 4).amax(-1)
            assert (supers >= inner - 1e-3 * inner.abs().clamp(min=1)).all()


def test_summary_dtype_is_fp16_only_for_16_bit_kv_on_a_gpu():
    assert summary_dtype("cuda", 2) == torch.float16
    assert summary_dtype("cuda", 4) == summary_dtype("cpu", 2) == summary_dtype("cpu", 4) == torch.float32


def test_host_sketches_select_what_device_sketches_select():
    g = torch.Generator().manual_seed(5)
    n_kv, c, d, n = 2, 8, 64, 4096
    keys = torch.randn(n_kv, n, d, generator=g) * torch.linspace(0.3, 2, d)
    dev, host = _selector(TwoLevel(), n_kv, d, c, 64, 64), _selector(TwoLevel(sketches="host"), n_kv, d, c, 64, 64)
    for sel in (dev, host):
        _fill(sel, keys)
    assert host.state.home == torch.device("cpu") and host.state.lo.device.type == "cpu"
    for _ in range(4):
        q = torch.randn(1, 4 * n_kv, d, generator=g)
        a, b = dev.select(0, q, n // c, n), host.select(0, q, n // c, n)
        assert torch.equal(a, b)
    assert host.counters["selections_two_level"] == 4
    # short context: the candidates would be every block, so every host sketch is scored (copied)
    short = _selector(TwoLevel(sketches="host"), n_kv, d, c, 64, 64)
    _fill(short, keys[:, :256])
    assert short.select(0, q, 256 // c, 256).shape == (n_kv, 64)


@pytest.mark.parametrize("bad", [dict(sketches="gpu"), dict(sketches="host"), dict(sketches="host", unit="chunk")])
def test_bad_placements(bad):
    with pytest.raises(ConfigError):
        Token(**bad)


def test_placed_bytes_per_token_and_head():
    r = 128 // 2 - 4  # Llama's head_dim 128: rank 60, sketch 60 + 4 bytes beside bf16 KV
    levels = 1 + 1 / 16  # blocks, and superblocks of 16 blocks
    assert TwoLevel(sketches="host").placed_bytes(128, 8, 2, "cuda") == ((2 * r + 2) * 2 / 16 * levels, r + 4)
    assert TwoLevel().placed_bytes(128, 8, 2, "cuda") == ((2 * r + 2) * 2 / 16 * levels + r + 4, 0)
    assert TwoLevel(fan=0).placed_bytes(128, 8, 2, "cpu") == ((2 * r + 2) * 4 / 16 + r + 4, 0)
    assert Token().placed_bytes(128, 8, 4, "cuda") == (r + 8, 0)


def test_the_store_spec_leaves_the_host_sketches_and_the_reserve_out_of_the_host_pool():
    ctx, host_mem = 65536, 256 << 20
    sparse = SparseConfig(budget=1024, policy=TwoLevel(sketches="host"), rest=None)
    cfg = OffloadConfig(ctx=ctx, host_mem=host_mem, sparse=sparse)
    args = (cfg, 4, 8, 128, torch.bfloat16, "cpu")
    spec = StoreSpec.derive(*args)
    sketches = spec.host_summary_bytes(ctx)
    assert sketches == 4 * 8 * (60 + 4) * ctx and spec.summary_bytes(ctx) == int(4 * 8 * 122 * 4 / 16 * (1 + 1 / 16) * ctx)
    chunk = spec.layout.chunk_bytes
    assert spec.host_chunks == host_mem // chunk - -(-sketches // chunk)
    reserved = StoreSpec.derive(*args, host_reserve=64 << 20)
    assert reserved.host_chunks == host_mem // chunk - -(-(sketches + (64 << 20)) // chunk)
    on_device = StoreSpec.derive(cfg.replace(sparse=SparseConfig(budget=1024, policy=TwoLevel(), rest=None)),
                                 *args[1:])  # fmt: skip
    assert on_device.host_chunks == host_mem // chunk and on_device.host_summary_bytes(ctx) == 0
