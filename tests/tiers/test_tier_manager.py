"""TierManager policy, without tensors: budgets, pinning, homes, eviction order, trace replay."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.tiers.eviction import LRU
from offload.tiers.manager import DISK, HOST, TierManager


def _check_invariants(mgr: TierManager):
    for layer, budget in enumerate(mgr.budgets):
        resident = mgr.resident(layer)
        assert len(resident) <= budget
        assert len(set(resident.values())) == len(resident)  # one chunk per slot
        assert all(0 <= s < budget for s in resident.values())
        every = list(range(mgr.n_chunks(layer)))[::-1]  # `homes` (many at once) says what `placement` does
        places = [mgr.placement(layer, c) for c in every]
        assert mgr.homes(layer, every) == ([-1 if p.home == DISK else p.host_slot for p in places],
                                           [-1 if p.gpu_slot is None else p.gpu_slot for p in places])  # fmt: skip
    assert mgr.host_used <= mgr.host_capacity


ops = st.lists(
    st.tuples(st.sampled_from(["add", "hot", "acquire", "truncate"]),
              st.integers(0, 2), st.lists(st.integers(0, 40), max_size=6), st.integers(0, 40)),
    max_size=60,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(ops=ops, host=st.integers(0, 12))
def test_budget_and_pin_invariants(ops, host):
    mgr = TierManager([1, 3, 4], host_capacity=host)
    for op, layer, chunks, n in ops:
        count = mgr.n_chunks(layer)
        if op in ("add", "hot"):
            p = mgr.add_chunk(layer, hot=op == "hot")
            assert p.home == (HOST if p.host_slot is not None else DISK)
        elif op == "truncate":
            mgr.truncate(layer, min(n, count))
        elif count:
            want = list(dict.fromkeys(c % count for c in chunks))[: mgr.budgets[layer]]
            plan = mgr.acquire(layer, want)
            assert set(plan.evicted).isdisjoint(want)  # never evict what this step reads
            for c, s in zip(plan.chunks, plan.slots):
                assert mgr.gpu_slot(layer, c) == s
            for _ in range(3):  # pinned chunks survive any later add in the same step
                mgr.add_chunk(layer, hot=True)
            assert all(mgr.gpu_slot(layer, c) is not None for c in want)
            mgr.release(layer)
        _check_invariants(mgr)


def test_homes_fill_host_then_disk_and_truncate_frees():
    mgr = TierManager([2], host_capacity=3)
    homes = [mgr.add_chunk(0).home for _ in range(5)]
    assert homes == [HOST, HOST, HOST, DISK, DISK]
    assert mgr.homes(0, [4, 0]) == ([-1, 0], [-1, 0])  # chunk 0 took the free GPU slot 0
    for bad in ([5], [-1], [0, 7]):
        with pytest.raises(IndexError):
            mgr.homes(0, bad)
    assert mgr.host_used == 3 and mgr.disk_chunks == 2
    freed = mgr.truncate(0, 2)
    assert [p.chunk for p in freed] == [4, 3, 2]
    assert mgr.host_used == 2 and mgr.disk_chunks == 0
    assert mgr.add_chunk(0).home == HOST  # the freed host slot is reused


def test_prefill_does_not_churn_but_decode_chunks_take_a_slot():
    mgr = TierManager([2], host_capacity=10)
    slots = [mgr.add_chunk(0).gpu_slot for _ in range(4)]
    assert slots == [0, 1, None, None]  # prefill: free slots only
    p = mgr.add_chunk(0, hot=True)  # decode: the new chunk evicts the LRU one
    assert p.gpu_slot is not None and mgr.counters["evictions"] == 1
    assert mgr.gpu_slot(0, 0) is None


def test_over_budget_request_is_refused():
    mgr = TierManager([2], host_capacity=10)
    for _ in range(3):
        mgr.add_chunk(0)
    with pytest.raises(ValueError, match="budget"):
        mgr.acquire(0, [0, 1, 2])
    mgr.acquire(0, [0, 1])
    with pytest.raises(ValueError, match="budget"):  # 2 pinned + 1 more
        mgr.acquire(0, [2])
    mgr.release(0)
    mgr.acquire(0, [2])


@pytest.mark.parametrize("bad, error", [([0, 3], IndexError), ([-1], IndexError), ([1, 0, 1], ValueError)])
def test_bad_ids_are_refused_and_change_nothing(bad, error):
    mgr = TierManager([3], host_capacity=10)
    for _ in range(3):
        mgr.add_chunk(0)
    before = (mgr.resident(0), dict(mgr.counters))
    with pytest.raises(error, match="chunk 3|chunk -1|distinct"):
        mgr.acquire(0, bad)
    assert (mgr.resident(0), dict(mgr.counters)) == before
    plan = mgr.acquire(0, [2, 0])  # nothing was left pinned: the whole budget is there
    assert plan.chunks == (2, 0) and mgr.counters["hits"] == before[1]["hits"] + 2


def _replay(budget, trace):
    mgr = TierManager([budget], host_capacity=100)
    for _ in range(max(max(s) for s in trace) + 1):
        mgr.add_chunk(0)
    hits = []
    for step in trace:
        before = mgr.counters["hits"]
        mgr.acquire(0, step)
        mgr.release(0)
        hits.append(mgr.counters["hits"] - before)
    return hits


def test_trace_replay_gives_expected_hits():
    # two slots; prefill placed chunks 0 and 1 there, chunk 2 is cold
    trace = [[0, 1], [2], [1], [0], [1], [2]]
    # LRU: [2] evicts 0; 1 hits; [0] evicts 2 (1 was just used); 1 hits; [2] evicts 0
    assert _replay(2, trace) == [2, 0, 1, 0, 1, 0]


def test_lru_never_picks_pinned():
    p = LRU()
    for k in range(5):
        p.insert(k)
        p.touch(k)
    assert p.victim({0, 1, 2, 3}) == 4
    with pytest.raises(LookupError):
        p.victim({0, 1, 2, 3, 4})


def test_slot_runs_cut_consecutive_slots_into_one_copy_each():
    from offload.tiers.manager import slot_runs

    assert list(slot_runs([])) == []
    assert list(slot_runs([None, None])) == []
    assert list(slot_runs([3, 4, 5, None, 7, 8, 8, 9, 2])) == [(0, 3), (4, 6), (6, 8), (8, 9)]
    assert list(slot_runs([4, 5, 6, 7], cut=6)) == [(0, 2), (2, 4)]  # slot 6 opens another arena
    assert list(slot_runs([5, 4])) == [(0, 1), (1, 2)]  # descending: one slot at a time
