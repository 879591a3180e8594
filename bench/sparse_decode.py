#!/usr/bin/env python
"""Decode tok/s at a long context: HF full attention vs offload dense vs offload sparse (per policy/budget).

Question: what does sparse decode buy in speed, against the stock model and our own dense store, on
the same machine, prompt and run? Every variant decodes --new greedy tokens after one natural-text
prompt (`natural_ids`); prefill is never timed.
  full    — stock transformers model (sdpa) with a DynamicCache, stepped by hand (see `_hf_decode`);
  dense   — offload without a budget: `Engine.decode` over the dense store;
  P@B     — offload with policy P and budget B (a fraction of the context, fixed as ceil(B * ctx)
            tokens per layer beyond sinks + window): `Engine.decode` over the tiered store;
            P@B/E with --select-every: the selection kept for E steps.
Offload variants share one prefill (`Prefilled.capture`); each round copies it into a fresh store
(`pf.store_for`, untimed). Variants are interleaved in rounds (--repeats, best of N) so that load from
other jobs hits them alike. tok/s = new / (seconds of the --new decode steps), the same for all.
"agree" = tokens equal to full's before the first difference (dense must reach --new); "fresh" =
share of (layer, step) selections made afresh rather than kept (OffloadConfig.select_every).
--lengths uses bench/prefill_decode.py's units: 8k = 8000 tokens. `--budgets 1` (one token per layer
beyond sinks + window, whole layers excepted) is the floor of a selecting store: it still scores
every token of every layer each step, but attends to almost nothing. `--ceiling S` adds a row
`full@S`: the stock model decoding after only the prompt's first S tokens — the same weights, norms
and MLPs with next to no attention. Its ratio to full bounds what *any* method that runs these
weights can reach at this length on this machine (Amdahl): 2 CPU cores spend most of a SmolLM2 step
reading the weights, not the KV. `--load N`: N other processes each spin one core while the rounds
run (a user's laptop with other programs: issue 24 part 6); rows carry "load".

    python bench/sparse_decode.py --lengths 8k --new 32 --policies bound,quest --budgets 1/16 --repeats 2 \
        --json bench/results/sparse_decode-cpu.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import copy
import dataclasses
import json
import time

import torch
from _common import CompetingLoad, add_sparse_args, machine, parse_with_threads, policy_split, unit_facts, with_sparse

from offload.hf_compat import cache_keyword, output_cache


@torch.inference_mode()
def _hf_prefill(hf, ids: list[int]):
    """One HF forward over the prompt: (DynamicCache, last-position logits [V])."""
    out = hf(torch.tensor([ids], device=hf.device), use_cache=True, logits_to_keep=1)  # as generate does
    return output_cache(out), out.logits[0, -1]


@torch.inference_mode()
def _hf_decode(hf, prefilled, first: int, new: int) -> tuple[float, list[int]]:
    """Time `new` greedy single-token forwards of the stock model on a copy of its prefilled cache.

    Why by hand and not `generate`: `generate` re-runs the prompt's prefill every call (about 36 s at
    8k on 2 cores, bench/results/cpu-2core.md), and subtracting a 1-token run from an N-token run
    would leave prefill noise larger than the decode itself. Stepping `hf(token, cache=...)`
    is what `generate`'s greedy loop does per token, minus its logits processors and stopping checks
    (small next to a 30-layer forward), and lets every round reuse one prefill: each round decodes
    on a deep copy of the prefilled cache (untimed; a sliding-window layer's cache cannot be cropped
    back once its window is full)."""
    cache = copy.deepcopy(prefilled)
    tok, tokens, kw = first, [], {cache_keyword(hf): cache}
    t0 = time.perf_counter()
    for _ in range(new):
        logits = hf(torch.tensor([[tok]], device=hf.device), use_cache=True, **kw).logits
        tok = int(logits[0, -1].argmax())
        tokens.append(tok)
    return time.perf_counter() - t0, tokens


def _offload_decode(model, pf, new: int, measure_threads: bool = False) -> tuple[float, list[int], dict]:
    """Time `new` greedy `Engine.decode` steps from a fresh copy of the shared prefill (measure_threads:
    each step through `DecodeThreads`, as offload's own generation runs them by default).

    Returns (seconds, tokens, store counters accumulated during the timed steps: hits/misses/...)."""
    from offload.decode_threads import DecodeThreads, ThreadProbe
    from offload.engine import Engine

    store = pf.store_for(model)  # untimed: stands in for this config's own prefill
    threads = DecodeThreads(ThreadProbe.for_machine() if measure_threads else ThreadProbe((torch.get_num_threads(),)))
    try:
        engine = Engine(model, store)
        before = store.stats()
        tok, tokens = int(pf.logits.argmax()), []
        t0 = time.perf_counter()
        for _ in range(new):
            tok = int(threads.step(engine.decode, tok).argmax())
            tokens.append(tok)
        seconds = time.perf_counter() - t0
        after = store.stats()
        # only the manager's event counters, as deltas over the timed steps (byte sizes are not events)
        counters = {k: after[k] - before.get(k, 0) for k in
                    ("hits", "misses", "misses_host", "misses_disk", "evictions", "selections",
                     "selections_kept") if k in after}
        return seconds, tokens, counters
    finally:
        threads.restore()
        store.close()


def _agree(tokens: list[int], ref: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), min(len(tokens), len(ref)))


def _variant(config, policy, split, tokens, every, chunk, unit):
    """The config of one sparse row (chunk, unit None: the policy's own; unit "chunk" is what every
    policy but token selects anyway)."""
    fields = {"select_every": every}
    if chunk is not None:
        fields["kv_chunk"] = chunk
    if unit is not None and (policy.partition("/")[0] == "token" or unit != "chunk"):
        fields["unit"] = unit
    return with_sparse(config, f"{policy}+{split}", tokens, **fields)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8k", help="prompt tokens, comma list (8k = 8000)")
    ap.add_argument("--new", type=int, default=32, help="tokens to decode per run")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over all variants, best of N")
    ap.add_argument("--select-every", default=None,
                    help="comma list of SparseConfig.select_every values (default: 1)")
    ap.add_argument("--kv-chunks", default=None,
                    help="comma list of OffloadConfig.kv_chunk values, sparse rows (default: the config's)")
    ap.add_argument("--select-units", default=None,
                    help="comma list of units (token, chunk) policy token picks, sparse rows "
                         "(default: each policy's)")
    ap.add_argument("--ceiling", type=int, default=None, metavar="S",
                    help="also time the stock model after the prompt's first S tokens (row full@S)")
    ap.add_argument("--measure-threads", action="store_true",
                    help="offload rows choose their thread count by measurement (offload.decode_threads), "
                         "from --threads down to 1; HF rows run --threads")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="N other processes each spinning one core while decoding is timed (a busy laptop)")
    add_sparse_args(ap, "bound,quest", "1/16", "(length, variant)")
    a = parse_with_threads(ap)
    import offload
    from offload.cli.units import parse_count
    from offload.config import SparseConfig
    from offload.eval.modes import Mode, parse_budget
    from offload.eval.recall import natural_ids
    from offload.eval.replay import Prefilled
    from offload.loading import load_reference

    lengths = [parse_count(x) for x in a.lengths.split(",")]
    if a.ceiling is not None and not 0 < a.ceiling < min(lengths):
        raise SystemExit(f"error: --ceiling must be in (0, {min(lengths)}), got {a.ceiling}")
    budgets = [parse_budget(b) for b in a.budgets.split(",")]
    policies = [policy_split(x.strip()) for x in a.policies.split(",")]
    model = offload.load_model(a.model, config=offload.OffloadConfig(ctx=max(lengths) + a.new + 8))
    everies = [int(e) for e in a.select_every.split(",")] if a.select_every else [1]
    chunks = [int(c) for c in a.kv_chunks.split(",")] if a.kv_chunks else [None]
    units = [u.strip() for u in a.select_units.split(",")] if a.select_units else [None]
    for p, lb in policies:  # fail on a bad name, chunk or unit before minutes of prefill
        for c, u in [(c, u) for c in chunks for u in units]:
            try:
                _variant(model.config, p, lb, 1, 1, c, u)
            except (offload.ConfigError, TypeError) as e:
                raise SystemExit(f"error: {e}") from None
    hf = load_reference(model)
    base = {"model": model.model_dir.name,
        "bench": "sparse_decode", "new_tokens": a.new, "repeats": a.repeats, "seed": a.seed,
        "device": str(model.device), "dtype": str(model.dtype), "threads": torch.get_num_threads(), "load": a.load,
        "measure_threads": a.measure_threads,
        "machine": machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{'ctx':>6} | {'variant':>20} | {'tokens':>6} | {'tok/s':>6} | {'vs full':>7} | {'agree':>5} | "
          f"{'hits':>6} | {'misses':>6} | {'fresh':>5}")
    for n in lengths:
        ids = natural_ids(model.tokenizer, n, a.seed)
        hf_runs = {"full": (n, *_hf_prefill(hf, ids))}  # name -> (prompt length, cache, last logits)
        variants = [("full", None, None, None, None)]
        ceiling = f"full@{a.ceiling}" if a.ceiling else None
        if ceiling:
            hf_runs[ceiling] = (a.ceiling, *_hf_prefill(hf, ids[: a.ceiling]))
            variants.append((ceiling, None, None, None, None))
        pf = Prefilled.capture(model, ids)
        variants.append(("dense", model, None, None, None))
        for p, lb in policies:
            for b in budgets:
                for e, c, u in [(e, c, u) for e in everies for c in chunks for u in units]:
                    tokens = Mode("sparse", b).budget_tokens(n)
                    cfg = _variant(model.config, p, lb, tokens, e, c, u)
                    facts = unit_facts(cfg)
                    name = (p if lb == SparseConfig.split else f"{p}+{lb}") + f"@{b}" + (f"/{e}" if len(everies) > 1 else "")
                    name += f":c{facts['kv_chunk']}" if len(chunks) > 1 else ""
                    name += (":tok" if facts["select_unit"] == "token" else ":chk") if len(units) > 1 else ""
                    variants.append((name, dataclasses.replace(model, config=cfg), p, lb, (b, tokens)))
        best = {v[0]: None for v in variants}  # name -> (seconds, tokens, counters) of the fastest round
        try:
            with CompetingLoad(a.load):
                for _ in range(a.repeats):
                    for name, m, *_ in variants:
                        if m is None:
                            _, cache, hf_logits = hf_runs[name]
                            s, toks = _hf_decode(hf, cache, int(hf_logits.argmax()), a.new)
                            res = (s, toks, {})
                        else:
                            res = _offload_decode(m, pf, a.new, a.measure_threads)
                        if best[name] is None or res[0] < best[name][0]:
                            best[name] = res
        finally:
            pf.close()
            hf_runs.clear()  # the caches: ~0.4 GB at 8k
        full_s, full_toks, _ = best["full"]
        for name, m, p, lb, budget in variants:
            s, toks, counters = best[name]
            row = {
                **base, "ctx": a.ceiling if name == ceiling else n, "variant": name, "policy": p,
                "layer_budget": lb,
                "budget": None if budget is None else str(budget[0]),
                "budget_tokens": None if budget is None else budget[1],
                "select_every": None if m is None or budget is None else m.config.sparse.select_every,
                "kv_chunk": None if m is None else unit_facts(m.config)["kv_chunk"],
                "select_unit": None if m is None or budget is None else unit_facts(m.config)["select_unit"],
                "decode_tps": round(a.new / s, 2), "ratio_to_full": round(full_s / s, 3),
                "agree_with_full": None if name == ceiling else _agree(toks, full_toks),
                **counters,
            }
            made = counters.get("selections", 0) + counters.get("selections_kept", 0)
            fresh = f"{counters['selections'] / made:.2f}" if made else "-"
            print(f"{n:>6} | {name:>20} | {row['budget_tokens'] or '-':>6} | {row['decode_tps']:>6.2f} | "
                  f"{row['ratio_to_full']:>7.2f} | {'-' if name == ceiling else row['agree_with_full']:>5} | "
                  f"{counters.get('hits', '-'):>6} | {counters.get('misses', '-'):>6} | {fresh:>5}", flush=True)
            if name == "dense" and row["agree_with_full"] != a.new:
                print("WARNING: dense offload decoded other tokens than HF full", flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
