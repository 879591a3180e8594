#!/usr/bin/env python
"""Where a decode step goes: milliseconds per phase of offload's step, exact and sparse, at a long context.

Question (issue 24): at 32k, what does a sparse step spend on the weights, and what on scoring, top-k,
gathering, attention and the rest? Every variant decodes --new greedy tokens after one natural-text
prompt (`natural_ids`, one shared prefill, `Prefilled`), the first --warmup steps untimed. Phases are
exclusive wall time (a phase that calls another is charged only its own part), timed by wrapping
offload's own functions in this process (CPU ops are synchronous; on CUDA every phase synchronizes,
which removes overlap: read CUDA rows as an upper bound per phase):

  select   Selector.select minus what it calls (budgets, kept selections, bookkeeping)
  blocks   a two-level policy's first level (`candidates`: block bounds, their top, the ids)
  score    the policy's scores (sketch matmuls, bound and mass, the hybrid ranking)
  topk     top_chunks / best_first
  gather   GpuPool.gather_rows / gather_tokens (the working set's copy of a new selection)
  attend   attention over sinks + window + selection (WorkingSet) or exact (a store's own attend,
           a sliding layer's ring)
  rest     RestCopies.attend: the body the selection skipped, at low precision
  merge    the read mask and merge_partials of selection and rest
  glue     DecodeAttention.attend's own part (ids, pins, counters)
  append   the new token's K/V into the store (chunks joining the body: summaries, rest copies)
  weights  everything else: embeddings, projections, RoPE, norms, MLPs, lm_head (step - the above)

`--hf` adds the stock model's step (sdpa, DynamicCache) as one number for scale.

    python bench/step_profile.py --lengths 32k --policies token,token/none --budgets 1/16 --new 16 --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import functools
import json
import time

import torch
from _common import add_sparse_args, machine, parse_with_threads, policy_split, with_sparse

PHASES = ("weights", "select", "blocks", "score", "topk", "gather", "attend", "rest", "merge", "glue", "append")


class PhaseClock:
    """Exclusive wall time per label of the wrapped callables; `undo` puts the originals back."""

    def __init__(self, cuda: bool):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._inner: list[float] = []  # per open call: time spent in wrapped callees
        self._undo: list[tuple] = []
        self._sync = torch.cuda.synchronize if cuda else (lambda: None)

    def wrap(self, owner, name: str, label: str) -> None:
        fn = owner.__dict__[name]
        clock = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            clock._inner.append(0.0)
            clock._sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock._sync()
                dt = time.perf_counter() - t0
                inner = clock._inner.pop()
                clock.seconds[label] += dt - inner
                if clock._inner:
                    clock._inner[-1] += dt

        setattr(owner, name, timed)
        self._undo.append((owner, name, fn))

    def undo(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)
        self._undo.clear()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def instrument(clock: PhaseClock) -> None:
    """Wrap every phase's functions (classes and the selector module's imported names)."""
    import offload.sparse.policies  # noqa: F401  (registers every policy's state class)
    import offload.sparse.selector as selector_mod
    from offload.hybrid_store import HybridKVStore
    from offload.kvstore import DenseKVStore
    from offload.sparse.policy import PolicyState
    from offload.sparse.rest import RestCopies
    from offload.tiers.decode_attention import DecodeAttention
    from offload.tiers.gpu import GpuPool
    from offload.tiers.store import TieredKVStore
    from offload.tiers.working_set import WorkingSet
    from offload.window_ring import WindowRing

    clock.wrap(selector_mod.Selector, "select", "select")
    for cls in _subclasses(PolicyState):
        if "scores" in cls.__dict__:
            clock.wrap(cls, "scores", "score")
        if "candidates" in cls.__dict__:
            clock.wrap(cls, "candidates", "blocks")
    clock.wrap(selector_mod, "top_chunks", "topk")
    clock.wrap(selector_mod, "best_first", "topk")
    clock.wrap(GpuPool, "gather_rows", "gather")
    clock.wrap(GpuPool, "gather_tokens", "gather")
    for owner, label in ((WorkingSet, "attend"), (TieredKVStore, "attend"), (DenseKVStore, "attend"),
                         (WindowRing, "attend"), (RestCopies, "attend")):
        clock.wrap(owner, "attend", "rest" if owner is RestCopies else label)
    clock.wrap(DecodeAttention, "_with_rest", "merge")
    clock.wrap(DecodeAttention, "attend", "glue")
    for owner in (TieredKVStore, DenseKVStore, HybridKVStore):
        clock.wrap(owner, "append", "append")


def _hf_step_ms(hf, ids: list[int], new: int) -> float:
    """The stock model's mean step (ms) over `new` greedy steps after one prefill of ids."""
    from offload.hf_compat import cache_keyword, output_cache

    with torch.inference_mode():
        out = hf(torch.tensor([ids], device=hf.device), use_cache=True, logits_to_keep=1)  # as generate does
        cache, tok = output_cache(out), int(out.logits[0, -1].argmax())
        kw = {cache_keyword(hf): cache}
        t0 = time.perf_counter()
        for _ in range(new):
            tok = int(hf(torch.tensor([[tok]], device=hf.device), use_cache=True, **kw).logits[0, -1].argmax())
        return 1000 * (time.perf_counter() - t0) / new


def _profile(model, pf, clock: PhaseClock, new: int, warmup: int) -> tuple[float, dict]:
    """(ms per step, ms per phase) of `new` timed steps after `warmup` untimed ones."""
    from offload.engine import Engine

    store = pf.store_for(model)
    try:
        engine = Engine(model, store)
        tok = int(pf.logits.argmax())
        for _ in range(warmup):
            tok = int(engine.decode(tok).argmax())
        clock.reset()
        t0 = time.perf_counter()
        for _ in range(new):
            tok = int(engine.decode(tok).argmax())
        step = 1000 * (time.perf_counter() - t0) / new
    finally:
        store.close()
    ms = {k: 1000 * v / new for k, v in clock.seconds.items()}
    ms["weights"] = step - sum(v for k, v in ms.items() if k != "weights")
    return step, ms


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="32k", help="prompt tokens, comma list (8k = 8000)")
    ap.add_argument("--new", type=int, default=16, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--hf", action="store_true", help="also time the stock model's step")
    add_sparse_args(ap, "token,token/none", "1/16", "(length, variant)")
    a = parse_with_threads(ap)
    if a.new < 1 or a.warmup < 0:
        raise SystemExit("error: --new must be >= 1 and --warmup >= 0")
    import offload
    from offload.cli.units import parse_count
    from offload.eval.modes import Mode, parse_budget
    from offload.eval.recall import natural_ids
    from offload.eval.replay import Prefilled

    lengths = [parse_count(x) for x in a.lengths.split(",")]
    budgets = [parse_budget(b) for b in a.budgets.split(",")]
    policies = [policy_split(x.strip()) for x in a.policies.split(",")]
    model = offload.load_model(a.model, config=offload.OffloadConfig(ctx=max(lengths) + a.new + a.warmup + 8))
    for p, lb in policies:  # a bad name fails before minutes of prefill
        try:
            with_sparse(model.config, f"{p}+{lb}", 1)
        except (offload.ConfigError, TypeError) as e:
            raise SystemExit(f"error: {e}") from None
    hf = None
    if a.hf:
        from offload.loading import load_reference

        hf = load_reference(model)
    base = {"bench": "step_profile", "model": model.model_dir.name, "new_tokens": a.new, "seed": a.seed,
            "device": str(model.device), "dtype": str(model.dtype), "threads": torch.get_num_threads(),
            "machine": machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"{'ctx':>6} | {'variant':>16} | {'ms/step':>8} | " + " | ".join(f"{p:>7}" for p in PHASES))
    clock = PhaseClock(model.device.type == "cuda")
    for n in lengths:
        ids = natural_ids(model.tokenizer, n, a.seed)
        if hf is not None:
            ms = _hf_step_ms(hf, ids, a.new)
            print(f"{n:>6} | {'HF full':>16} | {ms:>8.1f} |", flush=True)
            _emit(a, {**base, "ctx": n, "variant": "full", "step_ms": round(ms, 2)})
        variants = [("dense", model)]
        for p, lb in policies:
            for b in budgets:
                cfg = with_sparse(model.config, f"{p}+{lb}", Mode("sparse", b).budget_tokens(n))
                variants.append((f"{p}@{b}", dataclasses.replace(model, config=cfg)))
        pf = Prefilled.capture(model, ids)
        instrument(clock)
        try:
            for name, m in variants:
                step, ms = _profile(m, pf, clock, a.new, a.warmup)
                print(f"{n:>6} | {name:>16} | {step:>8.1f} | " + " | ".join(f"{ms[p]:>7.1f}" for p in PHASES),
                      flush=True)
                _emit(a, {**base, "ctx": n, "variant": name, "step_ms": round(step, 2),
                          **{f"{p}_ms": round(ms[p], 2) for p in PHASES}})
        finally:
            clock.undo()
            pf.close()


def _emit(a, row: dict) -> None:
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
