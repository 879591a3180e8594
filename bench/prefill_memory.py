#!/usr/bin/env python
"""Prefill at a long context: seconds and peak RSS of HF's forward against offload's layer-major prefill.

Question (issue 24): what does a 32k prompt cost to take in, in time and in host memory, with the stock
model and with offload? Each (length, variant) runs in a fresh child process, so that its peak RSS
(`ru_maxrss`) is its own: the child loads the model, notes its RSS, prefills one natural-text prompt
(`natural_ids`) and reports seconds, RSS after loading and the peak. Variants:
  hf      the stock model (sdpa) on the same weights: one `model(ids, use_cache=True)` forward, the
          prefill `generate` runs (its DynamicCache holds every layer's KV);
  exact   offload's prefill into the store the config asks for without a budget (what `--budget auto`
          picks on a CPU whose RAM holds the KV): `Engine.prefill`, --chunk tokens at a time;
  P@B     the same into a selecting store (policy P at budget B: summaries, the rest's low-precision
          copies, the tiers).
Variants run in turn per length, --repeats rounds, best time (peak RSS of the same round).

    python bench/prefill_memory.py --lengths 32k --variants hf,exact,token@1/16 --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(a) -> dict:
    """Load, prefill once, report (runs in its own process)."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import offload
    from offload.cli.units import parse_count
    from offload.eval.recall import natural_ids

    n = parse_count(a.child_length)
    if a.child == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from offload.loading import resolve_model_dir

        d = resolve_model_dir(a.model)
        hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="sdpa",
                                                  local_files_only=True).eval()  # fmt: skip
        ids = natural_ids(AutoTokenizer.from_pretrained(str(d), local_files_only=True), n, a.seed)
        loaded = _rss_mib()
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = hf(torch.tensor([ids]), use_cache=True, logits_to_keep=1)  # as generate does
            seconds = time.perf_counter() - t0
        del out
    else:
        from offload.engine import Engine

        config = offload.OffloadConfig(ctx=n + 64, **({"prefill_chunk": a.chunk} if a.chunk else {}))
        if a.child != "exact":
            from _common import policy_split, with_sparse

            from offload.eval.modes import Mode, parse_budget

            spec, _, b = a.child.partition("@")
            p, lb = policy_split(spec)
            config = with_sparse(config, f"{p}+{lb}", Mode("sparse", parse_budget(b)).budget_tokens(n))
        model = offload.load_model(a.model, config=config)
        ids = natural_ids(model.tokenizer, n, a.seed)
        loaded = _rss_mib()
        store = model.new_store()
        try:
            t0 = time.perf_counter()
            Engine(model, store).prefill(ids)
            seconds = time.perf_counter() - t0
        finally:
            store.close()
    return {"seconds": round(seconds, 2), "rss_loaded_mib": round(loaded), "rss_peak_mib": round(_peak_mib())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="32k", help="prompt tokens, comma list (8k = 8000)")
    ap.add_argument("--variants", default="hf,exact,token@1/16")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=None, help="offload's prefill chunk (default: the config's)")
    ap.add_argument("--seed", type=int, default=0, help="start of the natural-text prompt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default=None, help="embedded model name (smollm2, gemma3-270m) or local path")
    ap.add_argument("--json", default=None, help="append one JSON row per (length, variant) to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-length", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a)), flush=True)
        return
    from _common import machine

    variants = [v.strip() for v in a.variants.split(",")]
    print(f"{'ctx':>6} | {'variant':>14} | {'seconds':>8} | {'x HF':>5} | {'RSS loaded MiB':>14} | "
          f"{'peak MiB':>8} | {'peak - loaded':>13}")
    for length in a.lengths.split(","):
        best: dict[str, dict] = {}
        for _ in range(a.repeats):
            for v in variants:
                cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", v, "--child-length", length]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"error: {v} at {length} failed:\n{done.stderr[-2000:]}")
                res = json.loads(done.stdout.strip().splitlines()[-1])
                if v not in best or res["seconds"] < best[v]["seconds"]:
                    best[v] = res
        hf_s = best.get("hf", {}).get("seconds")
        for v in variants:
            r = best[v]
            ratio = None if hf_s is None else round(r["seconds"] / hf_s, 3)
            row = {"bench": "prefill_memory", "ctx": length, "variant": v, **r, "ratio_to_hf": ratio,
                   "model": a.model or "smollm2", "threads": a.threads, "chunk": a.chunk, "seed": a.seed,
                   "machine": machine(), "date": time.strftime("%Y-%m-%d")}
            print(f"{length:>6} | {v:>14} | {r['seconds']:>8.1f} | {'-' if ratio is None else f'{ratio:.2f}':>5} | "
                  f"{r['rss_loaded_mib']:>14} | {r['rss_peak_mib']:>8} | {r['rss_peak_mib'] - r['rss_loaded_mib']:>13}",
                  flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
