#!/usr/bin/env python
"""Greedy agreement of sparse decode with full attention, per selection policy and budget.

Question: how often does sparse decode pick the token full attention picks? The prompt is natural
prose (`natural_ids`, no chat template); the reference is HF `generate` (greedy, stock model, sdpa)
run for exactly --new tokens with no EOS stop. For each (policy, budget), from one shared prefill:
  forced   — teacher-forced top-1 agreement ("greedy agreement", the metric): feed the reference
             tokens and count the steps where this config's argmax equals the reference token;
  prefix   — free-running greedy decode: length of the common prefix with the reference;
  match    — free-running: fraction of the --new positions equal to the reference.
Row "dense" is offload without a budget; it must equal the reference exactly (forced 1.0, prefix N).
Budgets are fractions of the context, turned into a fixed token count ceil(f * context) per layer
(beyond sinks + window), as the eval does. `bound+squeeze` = policy bound, split "squeeze".
--context uses the eval's lengths: 4k = 4096 tokens.

    python bench/agreement.py --context 4k --new 256 --policies bound,quest,landmark,snapkv,h2o,bound+squeeze \
        --budgets 1/16,1/32 --json bench/results/agreement-cpu.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import json
import time

import torch
from _common import add_sparse_args, machine, parse_with_threads, policy_split, unit_facts, with_sparse


def _hf_reference(hf, ids: list[int], new: int) -> list[int]:
    """HF greedy continuation of exactly `new` tokens.

    eos_token_id=None would NOT disable the stop: generate fills None fields from the model's own
    generation_config (eos 2). An empty list survives that merge and leaves no stop token; min_new_tokens
    is avoided on purpose since it masks EOS logits, which would change the argmax we compare to."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=[], pad_token_id=0)
    x = torch.tensor([ids], device=hf.device)
    with torch.inference_mode():
        out = hf.generate(x, attention_mask=torch.ones_like(x), generation_config=config)
    tokens = out[0, len(ids):].tolist()
    if len(tokens) != new:  # the check the docstring promises: the reference really ran N tokens
        raise RuntimeError(f"HF generate returned {len(tokens)} tokens, expected {new}")
    return tokens


def _scores(models, pf, ref: list[int]) -> list[dict]:
    """Teacher-forced agreement and free-running prefix / match of each model's config against `ref`:
    two batched passes (`greedy_many`: rows share the weight reads) for all configs at once."""
    from offload.eval.replay import greedy_many

    n = len(ref)
    forced = greedy_many(models, pf, n, forced=ref)
    free = greedy_many(models, pf, n)
    out = []
    for picks, run in zip(forced, free):
        out.append({
            "forced_agreement": round(sum(a == b for a, b in zip(picks, ref)) / n, 4),
            "free_prefix": next((i for i, (a, b) in enumerate(zip(run, ref)) if a != b), n),
            "free_match": round(sum(a == b for a, b in zip(run, ref)) / n, 4),
            # first step where the teacher-forced argmax differs: where sparse attention first bites
            "first_forced_miss": next((i for i, (a, b) in enumerate(zip(picks, ref)) if a != b), None),
        })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", default="4k", help="prompt tokens (4k = 4096)")
    ap.add_argument("--new", type=int, default=256, help="tokens compared after the prompt")
    ap.add_argument("--select-every", type=int, default=1, help="SparseConfig.select_every, sparse rows")
    ap.add_argument("--kv-chunk", type=int, default=None,
                    help="OffloadConfig.kv_chunk, sparse rows (default: the config's)")
    add_sparse_args(ap, "bound,quest,landmark,snapkv,h2o", "1/16,1/32", "(policy, budget)")
    a = parse_with_threads(ap)
    import offload
    from offload.config import SparseConfig
    from offload.eval.modes import Mode, parse_budget, parse_length
    from offload.eval.recall import natural_ids
    from offload.eval.replay import Prefilled
    from offload.loading import load_reference

    n = parse_length(a.context)
    budgets = [parse_budget(b) for b in a.budgets.split(",")]
    policies = [policy_split(p.strip()) for p in a.policies.split(",")]
    model = offload.load_model(a.model, config=offload.OffloadConfig(ctx=n + a.new + 8, kv_chunk=a.kv_chunk))
    configs = [  # built up front so a bad policy name fails before minutes of prefill
        (p, lb, b, Mode("sparse", b).budget_tokens(n)) for p, lb in policies for b in budgets
    ]
    for p, lb, _, tokens in configs:
        with_sparse(model.config, f"{p}+{lb}", tokens, select_every=a.select_every)
    hf = load_reference(model)
    ids = natural_ids(model.tokenizer, n, a.seed)
    base = {"model": model.model_dir.name,
        "bench": "agreement", "context": n, "new_tokens": a.new, "seed": a.seed,
        "device": str(model.device), "dtype": str(model.dtype), "threads": torch.get_num_threads(),
        "machine": machine(), "select_every": a.select_every,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }

    t0 = time.perf_counter()
    ref = _hf_reference(hf, ids, a.new)
    hf_s = time.perf_counter() - t0
    del hf  # its weights are a second copy; nothing below needs them
    t0 = time.perf_counter()
    pf = Prefilled.capture(model, ids)  # one exact prefill shared by every row
    pf_s = time.perf_counter() - t0
    print(f"context {n} tokens, {a.new} compared; HF reference {hf_s:.1f} s, offload prefill {pf_s:.1f} s, "
          f"{torch.get_num_threads()} threads", flush=True)
    print(f"{'policy':>14} | {'budget':>6} | {'tokens':>6} | {'forced':>6} | {'prefix':>6} | {'match':>6} | "
          f"{'1st miss':>8} | {'s':>6}")

    # dense first: if it is not exact, the sparse rows measure our bugs, not sparsity
    todo = [("dense", SparseConfig.split, None, None)] + configs
    models = [model if b is None else dataclasses.replace(
        model, config=with_sparse(model.config, f"{p}+{lb}", tokens, select_every=a.select_every))
        for p, lb, b, tokens in todo]  # fmt: skip
    try:
        t0 = time.perf_counter()
        scores = _scores(models, pf, ref)
        each = round((time.perf_counter() - t0) / len(todo), 1)  # the rows ran as one batch
        for (p, lb, b, tokens), m, s in zip(todo, models, scores):
            row = {**base, "policy": p, "layer_budget": lb if b is not None else None, **unit_facts(m.config),
                   "budget": None if b is None else str(b), "budget_tokens": tokens, **s, "seconds": each}
            name = p if lb == SparseConfig.split else f"{p}+{lb}"
            print(f"{name:>14} | {row['budget'] or '-':>6} | {tokens or '-':>6} | {s['forced_agreement']:>6.3f} | "
                  f"{s['free_prefix']:>6} | {s['free_match']:>6.3f} | "
                  f"{'-' if s['first_forced_miss'] is None else s['first_forced_miss']:>8} | "
                  f"{row['seconds']:>6.1f}", flush=True)
            if b is None and (s["forced_agreement"] != 1.0 or s["free_prefix"] != a.new):
                print("WARNING: dense offload differs from HF greedy (rows share matmuls: fp rounding)",
                      flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        pf.close()


if __name__ == "__main__":
    main()
