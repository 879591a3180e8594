"""The decode thread count chosen by measurement (`offload.decode_threads`) and its use in generation."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

import offload
from offload.decode_threads import DecodeThreads, ThreadProbe, thread_counts


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_thread_counts_halve_down_to_one():
    assert thread_counts(1) == (1,)
    assert thread_counts(2) == (2, 1)
    assert thread_counts(6) == (6, 3, 1)
    assert thread_counts(16) == (16, 8, 4, 2, 1)
    for bad in (0, -2, True, 1.5, None):
        with pytest.raises(ValueError):
            thread_counts(bad)
    with pytest.raises(ValueError):
        ThreadProbe(())
    with pytest.raises(ValueError):
        ThreadProbe((2, 0))
    with pytest.raises(ValueError):
        ThreadProbe((2, 1), steps=0)
    with pytest.raises(ValueError):
        ThreadProbe((2, 1), cutoff=1.0)


def _step_costing(slow: int, seconds: float = 0.004):
    """A step that takes `seconds` longer when torch runs `slow` threads (as a busy core would)."""
    def step(tag):
        time.sleep(seconds if torch.get_num_threads() == slow else 0.0)
        return tag, torch.get_num_threads()
    return step


@pytest.mark.parametrize("slow, fast", [(2, 1), (1, 2)])
def test_the_faster_count_wins_and_is_measured_again(keep_threads, slow, fast):
    threads = DecodeThreads(ThreadProbe((2, 1), steps=3, every=5))
    step = _step_costing(slow)  # 4 ms more at `slow`: far past the cutoff (2x the fastest step)
    seen = [threads.step(step, i) for i in range(4)]
    assert [tag for tag, _ in seen] == list(range(4))  # the step's own result comes back
    assert [n for _, n in seen] == [2, 1, fast, fast]  # one step each, then the slow count is out
    assert threads.chosen == fast and threads.probes == 1
    assert [threads.step(step, i)[1] for i in range(5)] == [fast] * 5  # the winner runs ...
    assert threads.current == 2  # ... until the next probe, which starts from the largest count
    for i in range(4):
        threads.step(step, i)
    assert threads.chosen == fast and threads.probes == 2
    # the same winner twice: the next probe waits twice as long (10 steps)
    assert [threads.step(step, i)[1] for i in range(10)] == [fast] * 10 and threads.current == 2
    step = _step_costing(fast)  # the load moved: the other count is now the fast one
    for i in range(4):
        threads.step(step, i)
    assert threads.chosen == slow and threads.probes == 3
    threads.restore()
    assert torch.get_num_threads() == keep_threads


def test_counts_within_the_cutoff_are_probed_to_the_end(keep_threads):
    """Close counts (a quiet machine: 2 threads a little faster than 1) get every probe step,
    interleaved, and the better median wins."""
    threads = DecodeThreads(ThreadProbe((2, 1), steps=3, every=50))

    def step(_):
        time.sleep(0.005 if torch.get_num_threads() == 1 else 0.003)
        return torch.get_num_threads()

    assert [threads.step(step, i) for i in range(6)] == [2, 1, 2, 1, 2, 1]
    assert threads.chosen == 2
    threads.restore()


def test_one_count_never_probes(keep_threads):
    threads = DecodeThreads(ThreadProbe((1,)))
    assert [threads.step(_step_costing(1), i)[1] for i in range(4)] == [1, 1, 1, 1]
    assert threads.probes == 0 and threads.chosen is None
    threads.restore()
    assert torch.get_num_threads() == keep_threads


def test_generation_measures_threads_and_gives_torch_its_count_back(model, keep_threads):
    """None (the default): counts from torch's down to 1 are tried while decoding; a fixed count runs
    every step; either way torch's own count is back when the call ends."""
    torch.set_num_threads(2)
    auto = list(offload.stream_generate(model, "Once upon a time", max_new_tokens=12))
    assert {r.threads for r in auto} <= {1, 2} and len({r.threads for r in auto}) == 2  # both probed
    assert torch.get_num_threads() == 2
    fixed = dataclasses.replace(model, config=model.config.replace(threads=1))
    out = list(offload.stream_generate(fixed, "Once upon a time", max_new_tokens=12))
    assert {r.threads for r in out} == {1}
    assert torch.get_num_threads() == 2
    with pytest.raises(offload.ConfigError, match="threads"):
        model.config.replace(threads=0)
