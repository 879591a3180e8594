"""The decode thread count, chosen by measurement (the default on a CPU when `-t` is not given).

Why: a decode step is a chain of small ops, and with torch's OpenMP threads every parallel op waits
for its slowest thread. On a laptop whose other programs hold a core, the thread that shares that
core is the slow one, at every op: measured with another process spinning one of 2 cores, SmolLM2 at
a 1.7k-token prompt decoded at 5.1 tok/s exact and 1.2 sparse with 2 threads, 12.7 and 10.3 with
one (issue 24). On a quiet machine the same 2 threads are faster than one. Which count wins depends
on the load of the moment, so it is measured while decoding, never guessed:

- `ThreadProbe` (policy, frozen): the counts to try (all cores, halving down to 1), steps per count
  (interleaved, their median compared) and how often to measure again (the load moves).
- `DecodeThreads` (mechanism): `begin()` / `end(t0)` around one decode step (or `step(fn, *args)`)
  set the count of the moment and time the step; after a probe the fastest count runs until the next probe. `restore()` gives torch
  back the count it had (prefill's large matmuls want every core).

A probe costs its slow counts' extra time: with 2 counts, 4 steps each, every 128 steps, at most
4 of 128 steps run at the slower count; a count several times slower leaves the probe after one
step, and probes that keep choosing the same count come less often (up to every 1,024 steps).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

__all__ = ["ThreadProbe", "DecodeThreads", "thread_counts"]


def thread_counts(cores: int) -> tuple[int, ...]:
    """cores, cores // 2, ... down to 1 (distinct, largest first)."""
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be a positive integer, got {cores!r}")
    out, n = [], cores
    while n >= 1:
        out.append(n)
        n //= 2
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class ThreadProbe:
    """counts: thread counts to compare (largest first); steps: decode steps per count per probe;
    every: steps between the end of one probe and the start of the next (doubled, up to 8x, while
    probes keep choosing the same count); cutoff: a count none of whose steps came within this
    factor of the fastest step so far leaves the probe early (a busy core makes a step several
    times slower: probing it 4 times would cost more than the probe can win)."""

    counts: tuple[int, ...]
    steps: int = 4
    every: int = 128
    cutoff: float = 2.0

    def __post_init__(self):
        if not self.counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.counts):
            raise ValueError(f"counts must be positive integers, got {self.counts!r}")
        if self.steps < 1 or self.every < 1 or not self.cutoff > 1:
            raise ValueError(f"steps and every must be >= 1 and cutoff > 1, got {self.steps}, {self.every}, "
                             f"{self.cutoff}")

    @classmethod
    def for_machine(cls, threads: int | None = None) -> "ThreadProbe":
        """Counts from `threads` (the most to use; None = torch's count: one per core unless the
        user set OMP_NUM_THREADS or torch.set_num_threads) down to 1."""
        return cls(thread_counts(threads or torch.get_num_threads()))


class DecodeThreads:
    """Runs decode steps at the thread count measured fastest (see module doc)."""

    def __init__(self, probe: ThreadProbe):
        self.probe = probe
        self._start = torch.get_num_threads()
        self._times: dict[int, list[float]] = {}
        self._plan: list[int] = self._probe_plan()  # counts of the coming probe steps, in order
        self.chosen: int | None = None  # the count that won the last probe
        self._since = 0  # steps since the last probe ended
        self._every = probe.every  # steps until the next probe
        self.probes = 0  # probes finished
        self._running = self.current  # the count of the step under way

    def _probe_plan(self) -> list[int]:
        if len(self.probe.counts) == 1:
            return []
        self._times = {c: [] for c in self.probe.counts}
        return [c for _ in range(self.probe.steps) for c in self.probe.counts]  # interleaved: drift hits all

    @property
    def current(self) -> int:
        """The count the next step runs with."""
        if self._plan:
            return self._plan[0]
        return self.chosen if self.chosen is not None else self.probe.counts[0]

    def begin(self) -> float:
        """Torch's count set for the coming step; returns the step's start time for `end` (the
        caller runs the step itself: no frame of ours on the decode path)."""
        self._running = n = self.current
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return time.perf_counter()

    def end(self, t0: float) -> None:
        """The step begun at t0 is done."""
        self._took(self._running, time.perf_counter() - t0)

    def step(self, fn, *args):
        """fn(*args) at the current count, timed; returns its result."""
        t0 = self.begin()
        out = fn(*args)
        self.end(t0)
        return out

    def _took(self, n: int, seconds: float) -> None:
        if self._plan:
            self._plan.pop(0)
            self._times[n].append(seconds)
            best = min(min(t) for t in self._times.values() if t)
            slow = {c for c, t in self._times.items() if t and min(t) > self.probe.cutoff * best}
            self._plan = [c for c in self._plan if c not in slow]
            if not self._plan:
                self._chose()
            return
        self._since += 1
        if self._since >= self._every:
            self._plan = self._probe_plan()

    def _chose(self) -> None:
        """The probe is over: the fastest median wins (ties: the larger count); the same winner as
        last time doubles the wait for the next probe."""
        timed = [c for c in self.probe.counts if self._times[c]]
        winner = min(timed, key=lambda c: statistics.median(self._times[c]))
        self._every = min(2 * self._every, 8 * self.probe.every) if winner == self.chosen else self.probe.every
        self.chosen, self._since = winner, 0
        self.probes += 1

    def restore(self) -> None:
        """Torch's thread count back to what it was when this started."""
        if torch.get_num_threads() != self._start:
            torch.set_num_threads(self._start)
