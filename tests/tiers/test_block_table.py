"""`BlockTable.patch`: a fetch's misses and evictions written into the device row equal a full rebuild
from the manager, and a row that did not mirror the manager before the fetch is left to rebuild."""

import random

import torch

from offload.tiers.block_table import BlockTable
from offload.tiers.manager import TierManager


def _rebuilt(mgr, base, capacity):
    fresh = BlockTable(base, "cpu", capacity)
    return fresh.row(0, mgr).clone()


def test_patched_rows_equal_rebuilt_rows_through_many_fetches():
    rng = random.Random(0)
    mgr = TierManager([24, 24], host_capacity=40)
    base = [0, 24]
    for _ in range(100):
        mgr.add_chunk(0)
    table = BlockTable(base, "cpu", 128)
    table.row(0, mgr)  # mirrors the manager
    patched = 0
    for _ in range(60):
        seen = mgr.version(0)
        plan = mgr.acquire(0, rng.sample(range(100), rng.randint(1, 20)))
        table.patch(0, seen, mgr, plan)
        patched += seen != mgr.version(0)
        assert table._seen[0] == mgr.version(0)  # no rebuild pending
        assert torch.equal(table._rows[0], _rebuilt(mgr, base, 128))
        mgr.release(0)
    assert patched > 30


def test_a_stale_row_is_not_patched_but_rebuilt():
    mgr = TierManager([4], host_capacity=8)
    for _ in range(10):
        mgr.add_chunk(0)
    table = BlockTable([0], "cpu", 16)
    table.row(0, mgr)
    mgr.acquire(0, [5])  # changed behind the table's back
    mgr.release(0)
    seen = mgr.version(0)
    table.patch(0, seen, mgr, mgr.acquire(0, [7, 8]))
    assert table._seen[0] != mgr.version(0)  # left stale: the next row() rebuilds it
    assert torch.equal(table.row(0, mgr), _rebuilt(mgr, [0], 16))
