"""`BlockBounds.candidates` with three levels equals its definition computed the long way: the
`keep` best blocks (by block bound) among the blocks of the `wanted` best superblocks (by
superblock bound) and the blocks past the last complete superblock, as token ids, then every token
past the last complete block."""

import pytest
import torch

from offload.sparse.block_bounds import SUPER_OVERSAMPLE, BlockBounds, _bound


@pytest.mark.parametrize("seed, n_tokens", [(0, 16 * 4 * 40 + 16 * 3 + 5), (1, 16 * 4 * 64), (2, 16 * 4 * 33 + 9)])
def test_three_levels_keep_the_best_blocks_of_the_best_superblocks(seed, n_tokens):
    g = torch.Generator().manual_seed(seed)
    b, n_kv, group, d, r, blk, fan = 1, 2, 3, 32, 8, 16, 4
    bounds = BlockBounds(1, b, n_kv, r, blk, "cpu", fan=fan)
    levels = torch.randint(-127, 128, (b, n_kv, r, n_tokens), generator=g, dtype=torch.int8)
    aux = torch.rand(b, n_kv, 2, n_tokens, generator=g) + 0.01
    bounds.update(0, levels, aux, 0, n_tokens // 2)  # written in two pieces, as appends do
    bounds.update(0, levels, aux, n_tokens // 2, n_tokens)
    basis = torch.linalg.qr(torch.randn(n_kv, d, r, generator=g))[0]
    q = torch.randn(b, n_kv * group, d, generator=g)
    count = 3 * blk + 1  # keep = 4 blocks, wanted = 4 superblocks
    keep, full = -(-count // blk), n_tokens // blk
    supers, wanted = full // fan, -(-SUPER_OVERSAMPLE * -(-count // blk) // fan)
    assert wanted < supers  # the third level is used
    ids = bounds.candidates(0, q, basis, n_tokens, count, 0.5)

    row = bounds._row(q, basis, n_kv, 0.5)
    best_supers = _bound(row, bounds.coarse[0, :, :, :supers]).topk(wanted, dim=-1).indices  # [B, Hkv, wanted]
    block_scores = _bound(row, bounds.summary[0, :, :, :full])  # every block, the long way
    for h in range(n_kv):
        among = [s * fan + i for s in best_supers[0, h].tolist() for i in range(fan)] + list(range(supers * fan, full))
        chosen = sorted(sorted(among, key=lambda j: -block_scores[0, h, j].item())[:keep])
        want = [j * blk + t for j in chosen for t in range(blk)] + list(range(full * blk, n_tokens))
        assert ids[0, h].tolist() == want
