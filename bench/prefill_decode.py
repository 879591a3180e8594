"""Prefill seconds and decode tok/s: offload (dense store) vs HF on the same model, machine and run.

Question: does our own layer-major loop cost anything against HF's single forward and `generate`?
HF prefill = one `model(ids)` forward; HF decode = `model.generate` (greedy, fixed length), timed per
token with a streamer. offload = `run_generation` on a fresh dense store (what `generate` runs).
Decode tok/s = (tokens - 1) / (time of last token - time of first), the same definition for both.

    python bench/prefill_decode.py --lengths 1k,4k,8k --new 32 --repeats 2 --json bench/results/runs.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import time

import torch


def _hf_times(hf, ids, new):
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    with torch.inference_mode():
        t0 = time.perf_counter()
        hf(ids)
        prefill = time.perf_counter() - t0
        clock = Clock()
        hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, streamer=clock)
    tok = clock.times[1:]  # the first put() is the prompt
    return prefill, (len(tok) - 1) / (tok[-1] - tok[0])


def _offload_times(model, ids, new):
    from offload.engine import Engine
    from offload.generate import run_generation
    from offload.sampling import SamplingParams

    store = model.new_store()
    eos = model.eos_ids
    try:
        t0 = time.perf_counter()
        times = []
        gen = run_generation(Engine(model, store), ids, max_new_tokens=new, sampling=SamplingParams())
        for r in gen:
            times.append(time.perf_counter())
            if r.token in eos:
                break
        prefill = times[0] - t0
        return prefill, (len(times) - 1) / (times[-1] - times[0])
    finally:
        store.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1k,4k,8k")
    ap.add_argument("--new", type=int, default=32, help="tokens to decode per run")
    ap.add_argument("--repeats", type=int, default=2, help="best of N, alternating HF and offload")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="append one JSON row per length to this file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    import offload
    from offload.cli.units import parse_count
    from offload.loading import load_reference

    lengths = [parse_count(x) for x in a.lengths.split(",")]
    # threads fixed for both (None: offload would measure its own decode count; HF cannot)
    model = offload.load_model(config=offload.OffloadConfig(ctx=max(lengths) + a.new + 8,
                                                            threads=a.threads or torch.get_num_threads()))
    hf = load_reference(model)
    # random prompts with no EOS token, so both decode exactly `new` tokens
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'ctx':>6} | {'HF prefill s':>12} | {'ours s':>7} | {'ratio':>5} | {'HF tok/s':>8} | {'ours tok/s':>10} | {'ratio':>5}")
    for n in lengths:
        ids = torch.randint(100, 40000, (1, n), generator=gen)
        best = {"hf_p": 1e9, "of_p": 1e9, "hf_d": 0.0, "of_d": 0.0}
        for _ in range(a.repeats):
            p, d = _hf_times(hf, ids, a.new)
            best["hf_p"], best["hf_d"] = min(best["hf_p"], p), max(best["hf_d"], d)
            p, d = _offload_times(model, ids[0].tolist(), a.new)
            best["of_p"], best["of_d"] = min(best["of_p"], p), max(best["of_d"], d)
        row = {
            "bench": "prefill_decode", "ctx": n, "new_tokens": a.new, "repeats": a.repeats,
            "hf_prefill_s": round(best["hf_p"], 3), "offload_prefill_s": round(best["of_p"], 3),
            "prefill_ratio": round(best["of_p"] / best["hf_p"], 3),
            "hf_decode_tps": round(best["hf_d"], 2), "offload_decode_tps": round(best["of_d"], 2),
            "decode_ratio": round(best["of_d"] / best["hf_d"], 3),
            "device": str(model.device), "dtype": str(model.dtype), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        }
        rows.append(row)
        print(f"{n:>6} | {row['hf_prefill_s']:>12.2f} | {row['offload_prefill_s']:>7.2f} | "
              f"{row['prefill_ratio']:>5.2f} | {row['hf_decode_tps']:>8.1f} | {row['offload_decode_tps']:>10.1f} | "
              f"{row['decode_ratio']:>5.2f}", flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
