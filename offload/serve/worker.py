"""One sequence at a time, first come first served: the worker thread that owns the model.

Requests become `Job`s in a bounded FIFO (a full one answers 429 with Retry-After). The one worker
thread takes them in order, finds the longest processed prefix (a slot in memory, else a session in
the disk cache), prefills only the rest and streams each step to the job's `emit` callback. A job
whose client went away is cancelled: skipped if still waiting, stopped after the current token (or
prefilled layer) if running, its slot rewound to what its KV holds."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from offload.errors import DiskFullError, OffloadError
from offload.sampling import SamplingParams

from .errors import APIError
from .slots import Cancelled, SlotPool, common_prefix

__all__ = ["Job", "Worker", "Outcome"]

log = logging.getLogger("offload.serve")


@dataclass(frozen=True)
class Outcome:
    """How a job ended: token counts for `usage`, and llama-server's `timings` fields (ms, tok/s)."""

    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prompt_ms: float
    predicted_ms: float
    predicted_per_second: float

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}  # fmt: skip

    def timings(self) -> dict:
        n = self.prompt_tokens - self.cached_tokens
        return {
            "cache_n": self.cached_tokens, "prompt_n": n, "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": self.prompt_ms / max(n, 1),
            "prompt_per_second": 1000.0 * n / max(self.prompt_ms, 1e-6),
            "predicted_n": self.completion_tokens, "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": self.predicted_ms / max(self.completion_tokens, 1),
            "predicted_per_second": self.predicted_per_second,
        }  # fmt: skip


@dataclass(eq=False)
class Job:
    """ids: the prompt's token ids; max_tokens: checked against the context already.
    emit(kind, value) is called from the worker thread: ("text", str) per released piece of text,
    then exactly one of ("done", Outcome), ("error", APIError) (a cancelled job's is code "cancelled")."""

    ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    emit: Callable[[str, object], None]
    label: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Worker:
    """Owns the model's KV (memory slots, disk cache) and runs jobs one at a time on its thread."""

    def __init__(self, model, config, disk_cache=None):
        self.model, self.config, self.disk = model, config, disk_cache
        self.slots = SlotPool(model, config.memory_slots, max_tokens=model.n_ctx)
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._running: Job | None = None
        self._stopping = False
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}
        self.last: dict | None = None  # the last completed request: tokens, speed, KV counters per step
        self._thread = threading.Thread(target=self._loop, name="offload-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; APIError 429 (with Retry-After) when queue_size jobs already wait."""
        with self._cv:
            if self._stopping:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self._queue) >= self.config.queue_size and self._running is not None:
                raise APIError(429, f"{len(self._queue)} requests are already waiting (--queue-size "
                               f"{self.config.queue_size}); retry later", type="rate_limit_error",
                               code="queue_full", headers={"Retry-After": "1"})  # fmt: skip
            self._queue.append(job)
            self._cv.notify()

    def status(self) -> dict:
        with self._cv:
            return {"queue": len(self._queue), "running": int(self._running is not None), **self.counts,
                    "slots": len(self.slots), "disk_sessions": len(self.disk) if self.disk else 0}  # fmt: skip

    def cancel_all(self, stop: bool = False) -> None:
        """Cancel every job (the running one stops after its current token); stop: accept no more."""
        with self._cv:
            self._stopping = self._stopping or stop
            for job in self._queue:
                job.cancel()
            if self._running is not None:
                self._running.cancel()
            self._cv.notify_all()

    def shutdown(self) -> None:
        """Cancel every job, stop the thread, free the KV (spill files go with the stores)."""
        self.cancel_all(stop=True)
        self._thread.join()
        self.slots.close()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
            try:
                if job.cancelled.is_set():
                    self._cancelled(job, None)
                else:
                    self._run(job)
            finally:
                with self._cv:
                    self._running = None

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        slot, first, last = None, None, None
        try:
            slot, cached = self._slot_for(job)
            before = slot.store.stats()
            steps = slot.generate(job.ids, max_new_tokens=job.max_tokens, sampling=job.sampling, stop=job.stop,
                                  cancelled=job.cancelled)  # fmt: skip
            try:
                for r in steps:
                    first = first or time.perf_counter()
                    last = r
                    if job.cancelled.is_set():
                        raise Cancelled()
                    if r.text:
                        job.emit("text", r.text)
            finally:
                steps.close()
        except Cancelled:
            self._cancelled(job, last)
            return
        except Exception as e:  # the KV may be half-written: forget this slot, keep serving
            if slot is not None:
                self.slots.drop(slot)
            self.counts["failed"] += 1
            log.error("%s failed:\n%s", job.label, traceback.format_exc())
            job.emit("error", _failure(e))
            return
        end = time.perf_counter()
        n_gen = last.generation_tokens
        outcome = Outcome(
            finish_reason=last.finish_reason or "length", prompt_tokens=len(job.ids), cached_tokens=cached,
            completion_tokens=n_gen, prompt_ms=1000 * (first - t0), predicted_ms=1000 * (end - first),
            predicted_per_second=last.generation_tps if n_gen > 1 else 0.0,
        )  # fmt: skip
        self.counts["completed"] += 1
        self.last = {**outcome.usage(), **outcome.timings(), "kv_per_step": kv_per_step(before, slot.store.stats(), n_gen)}
        job.emit("done", outcome)
        t = outcome.timings()
        log.info("%s: %d prompt tok (%d cached) in %.0f ms | %d gen tok at %.1f tok/s | %s", job.label,
                 outcome.prompt_tokens, cached, t["prompt_ms"], n_gen, t["predicted_per_second"],
                 outcome.finish_reason)
        if self.disk is not None and len(job.ids) - cached >= self.config.save_min_tokens:
            self._save(slot)

    def _save(self, slot) -> None:
        """Keep the slot's prefix on disk (after the answer went out; a request that arrives meanwhile
        waits for it: bench/results/serve-cpu.md)."""
        try:
            t0 = time.perf_counter()
            if slot.saved < len(slot.tokens) and self.disk.save(slot.store, slot.tokens) is not None:
                slot.saved = len(slot.tokens)
                log.info("cache: %d tokens saved in %.2f s", slot.saved, time.perf_counter() - t0)
        except Exception:  # the cache is an optimisation; serving goes on without it
            log.error("cache: saving failed:\n%s", traceback.format_exc())

    def _cancelled(self, job: Job, last) -> None:
        self.counts["cancelled"] += 1
        log.info("%s cancelled after %d tokens", job.label, last.generation_tokens if last else 0)
        job.emit("error", APIError(503, "the generation was cancelled (client gone or server stopping)",
                                   type="server_error", code="cancelled"))  # fmt: skip

    def _slot_for(self, job: Job):
        """(slot, cached tokens): the memory slot or disk session with the longest shared prefix."""
        need = len(job.ids) + job.max_tokens
        _, in_memory = self.slots.best(job.ids)
        loaded = None
        if self.disk is not None:
            path, on_disk = self.disk.best(job.ids)
            if path is not None and on_disk > in_memory:
                loaded = self.disk.load(path)
        slot = self.slots.take(job.ids, need, loaded)
        # what the slot keeps of its KV: the shared prefix (at least one token is always prefilled)
        return slot, min(common_prefix(slot.tokens, job.ids), len(job.ids) - 1)


STEP_COUNTERS = ("hits", "misses", "misses_host", "misses_disk", "evictions", "rounds", "stall_s", "token_hits",
                 "token_misses", "token_evictions", "token_ahead", "token_ahead_hits", "ahead_wait_s")


def kv_per_step(before: dict, after: dict, steps: int) -> dict:
    """The store's event counters over one request, per generated token (its prefill included):
    hits and misses of the GPU hot set (from host / disk; chunks, and rows of a token cache), evictions,
    layer steps read in rounds,
    and the host's seconds waiting for selection ids; `tokens` and bytes per tier as they stand."""
    out = {k: round((after[k] - before.get(k, 0)) / max(steps, 1), 6) for k in STEP_COUNTERS if k in after}
    return {**out, **{k: after[k] for k in ("tokens", "gpu_bytes", "host_bytes", "disk_bytes") if k in after}}


def _failure(e: Exception) -> APIError:
    """The error a client sees for a generation that failed: offload's own errors say what to fix
    (a full disk is 507), anything else is a bare 500 (the traceback went to the log)."""
    if isinstance(e, DiskFullError):
        return APIError(507, str(e), type="server_error", code="disk_full")
    if isinstance(e, OffloadError):
        return APIError(500, str(e), type="server_error", code="internal_error")
    return APIError(500, f"internal error ({type(e).__name__}); the server log has the details",
                    type="server_error", code="internal_error")
