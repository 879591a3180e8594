#!/usr/bin/env python
"""W-GPU: an 8B model's decode at long contexts on one GPU capped at 24 GiB (a 4090 stand-in), against
the bandwidth floor of the same step and against HF's offloaded cache.

Llama-3.1-8B geometry (positions to 1M) with random bf16 weights made on the device: speed does not
depend on weight values. For each --lengths L the memory plan for --gpu-mem picks the decode as
`--budget auto` does (`offload.decode_choice`: exact when the KV fits the hot set, else sparse at 1/16,
the rest dropped where it does not fit); the store is filled with random KV written straight in (no
prefill, so the split over layers is uniform: no prompt statistics), then --steps greedy steps are
timed one by one (median, after 2 warm-up steps). Per row: tok/s; layers per step that read in
rounds from the tiers (their selection's chunks outgrew the slots: bench/results/chunk-union-smollm2.md)
and the host's wait for selection ids (stall); the floor = weights + what the step reads on the GPU (selection, summaries, rest, sinks + window) at the measured device-copy GB/s +
the bytes it fetched (on demand and ahead) at the measured pinned host-to-device GB/s; decode ÷
floor; hit rate and misses per step (chunks, or single rows where a token cache holds the hot set:
tiers/token_cache.py) and their MB; rows fetched a layer ahead (tiers/lookahead.py; on by default
on CUDA, and --ahead-off-lengths again without it); peak GPU (allocator), host (RSS) and disk. `--prefill-lengths`: a real layer-major prefill
of random ids, timed. In the same run: HF `DynamicCache(offloading=True)` decode (sdpa) at
--hf-lengths, filled the same way, and offload exact (`dense`) at --dense-lengths.
`--tiny`: a 2-layer model on the CPU at 1k and 2k in seconds, the same code (a test runs it).

    python bench/long_context.py --json $OUT/long_context.jsonl          # on the GPU, ~5 minutes
    python bench/long_context.py --tiny
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import copy_gbps  # noqa: E402
from _common import sync as _sync  # noqa: E402

GIB = 1 << 30
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0)
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False)
SLICE = 8192  # tokens of random KV made at a time


def build(geometry: dict, device, dtype):
    """A Llama with random weights made on `device` in `dtype` (no host copy), offload's attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from offload.attention import ATTN_NAME, register_attention

    register_attention()
    cfg = LlamaConfig(**geometry, max_position_embeddings=1 << 20)
    cfg._attn_implementation = ATTN_NAME
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return hf.eval()


def configure(hf, ctx: int, a, budget="auto", lookahead=None):
    """(OffloadModel, plan, decode reason) at ctx: budget "auto" as offload-chat decides, None exact;
    lookahead: SparseConfig.lookahead (None: auto)."""
    from offload.config import OffloadConfig, SparseConfig
    from offload.decode_choice import choose_decode, fit_rest
    from offload.model import OffloadModel
    from offload.plan import plan

    base = OffloadConfig(ctx=ctx, device=str(hf.device), dtype=str(hf.dtype).removeprefix("torch."),
                         kv_store="tiered", gpu_mem=a.gpu_mem, host_mem=a.host_mem, disk_dir=a.disk_dir)  # fmt: skip

    def plan_of(c):
        return plan(hf.config, ctx, gpu_mem=a.gpu_mem, host_mem=a.host_mem, disk_dir=a.disk_dir, offload=c,
                    dtype=hf.dtype, device=hf.device)  # fmt: skip

    def plan_for(b):
        return fit_rest(base if b is None else base.replace(sparse=SparseConfig(budget=b, lookahead=lookahead)), plan_of)

    if budget == "auto":
        choice, config, memory = choose_decode(plan_for)
        reason = choice.reason
    else:
        (config, memory), reason = plan_for(budget), "exact attention (dense row)"
    return OffloadModel(hf=hf, tokenizer=None, config=config, model_dir=Path("random-weights")), memory, reason


@torch.inference_mode()
def fill(store, model, n: int, seed: int = 0) -> float:
    """Random KV for n tokens written into every layer (slices of SLICE tokens); seconds taken."""
    n_layers, n_kv, d = model.kv_shape()
    g = torch.Generator(device=model.device).manual_seed(seed)
    t0 = time.perf_counter()
    for layer in range(n_layers):
        for s in range(0, n, SLICE):
            t = min(SLICE, n - s)
            k = torch.randn(1, n_kv, t, d, generator=g, device=model.device, dtype=model.dtype)
            v = torch.randn(1, n_kv, t, d, generator=g, device=model.device, dtype=model.dtype)
            store.append(layer, k, v)
    _sync(model.device)
    return time.perf_counter() - t0


def _peak_host() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def decode_row(model, memory, reason, n: int, a, bw: dict) -> dict:
    """Fill a store with n tokens, time --steps decode steps; the row (see module doc)."""
    from offload.decode_choice import decode_label
    from offload.engine import Engine

    dev = model.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    store = model.new_store()
    try:
        fill_s = fill(store, model, n)
        engine, tok, times = Engine(model, store), 1, []
        before = store.stats()
        for i in range(2 + a.steps):
            if i == 2:
                before = store.stats()
            _sync(dev)
            t0 = time.perf_counter()
            tok = int(engine.decode(tok).argmax())
            _sync(dev)
            times.append(time.perf_counter() - t0)
        after = store.stats()
        step = statistics.median(times[2:])
        lay = store.layout
        counters = ("hits", "misses", "token_hits", "token_misses", "token_ahead", "rounds", "stall_s", "ahead_wait_s")
        c = {k: (after.get(k, 0) - before.get(k, 0)) / a.steps for k in counters}
        sparse = model.config.sparse
        n_layers, n_kv, d = model.kv_shape()
        tok_bytes = n_layers * 2 * n_kv * d * model.dtype.itemsize
        budget = store.selector.token_budget(0, n) if sparse is not None else n
        read = min(n, budget + lay.sinks + model.config.window) * tok_bytes + memory.abstracts_bytes
        rows = c["token_misses"] + c["token_ahead"]  # rows fetched on demand and ahead both cross PCIe
        miss_bytes = c["misses"] * lay.chunk_bytes + rows * 2 * d * model.dtype.itemsize  # chunks, rows
        hits, misses = c["hits"] + c["token_hits"], c["misses"] + c["token_misses"]  # a token cache's: rows
        weights = sum(p.numel() * p.element_size() for p in model.hf.parameters())
        floor = (weights + read) / (bw["hbm_gbps"] * 1e9) + miss_bytes / (bw["h2d_gbps"] * 1e9)
        return {
            "row": decode_label(model.config), "ctx": n, "tok_s": round(1 / step, 3), "step_ms": round(step * 1e3, 2),
            "floor_ms": round(floor * 1e3, 2), "decode_over_floor": round(step / floor, 2),
            "hit_rate": round(hits / max(hits + misses, 1e-9), 4), "misses_per_step": round(misses, 1),
            "miss_mb_per_step": round(miss_bytes / 2**20, 3),
            "hot_set": "rows" if getattr(store, "token_cache", None) is not None else "chunks",
            "rounds_per_step": round(c["rounds"], 1), "stall_ms": round(c["stall_s"] * 1e3, 2),
            "ahead_per_step": round(c["token_ahead"], 1), "ahead_wait_ms": round(c["ahead_wait_s"] * 1e3, 2),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated(dev) / GIB, 2) if dev.type == "cuda" else 0.0,
            "peak_host_gib": round(_peak_host() / GIB, 2), "disk_gib": round(after.get("disk_bytes", 0) / GIB, 3),
            "fill_s": round(fill_s, 1), "why": reason,
        }  # fmt: skip
    finally:
        store.close()


@torch.inference_mode()
def hf_row(hf, n: int, a) -> dict:
    """HF's own decode (sdpa) on DynamicCache(offloading=True) holding n tokens of random KV."""
    from transformers import DynamicCache

    from offload.attention import ATTN_NAME
    from offload.hf_compat import cache_keyword
    dev = hf.device
    n_layers, n_kv = hf.config.num_hidden_layers, hf.config.num_key_value_heads
    d = hf.config.hidden_size // hf.config.num_attention_heads
    hf.set_attn_implementation("sdpa")
    try:
        cache = DynamicCache(config=hf.config, offloading=dev.type == "cuda")
        g = torch.Generator(device=dev).manual_seed(0)
        for layer in range(n_layers):
            k = torch.randn(1, n_kv, n, d, generator=g, device=dev, dtype=hf.dtype)
            cache.update(k, torch.randn_like(k), layer)
            del k
        tok, times, kw = 1, [], {cache_keyword(hf): cache}
        for _ in range(2 + a.steps):
            _sync(dev)
            t0 = time.perf_counter()
            logits = hf(torch.tensor([[tok]], device=dev), use_cache=True, **kw).logits
            tok = int(logits[0, -1].argmax())
            _sync(dev)
            times.append(time.perf_counter() - t0)
        step = statistics.median(times[2:])
        return {"row": "HF offloaded cache" if dev.type == "cuda" else "HF DynamicCache", "ctx": n,
                "tok_s": round(1 / step, 3), "step_ms": round(step * 1e3, 2)}  # fmt: skip
    finally:
        hf.set_attn_implementation(ATTN_NAME)


def prefill_row(model, n: int) -> dict:
    from offload.engine import Engine

    store = model.new_store()
    try:
        ids = torch.randint(0, model.hf.config.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
        _sync(model.device)
        t0 = time.perf_counter()
        Engine(model, store).prefill(ids)
        _sync(model.device)
        s = time.perf_counter() - t0
        return {"row": "prefill", "ctx": n, "tok_s": round(n / s, 1), "seconds": round(s, 1)}
    finally:
        store.close()


def _tiny_gpu_mem(hf, a) -> int:
    """GPU bytes for --tiny: the plan's fixed part at 2k plus 3/4 of 2k tokens' KV."""
    from offload.config import OffloadConfig
    from offload.plan import plan

    p = plan(hf.config, 2048, gpu_mem=1 << 40, host_mem=a.host_mem, disk_dir=a.disk_dir,
             offload=OffloadConfig(kv_store="tiered"), dtype=hf.dtype, device=hf.device)  # fmt: skip
    return p.gpu_total_bytes - p.hot_set_bytes + p.kv_bytes * 3 // 4


def _count(text: str) -> list[int]:
    from offload.cli.units import parse_count

    return [parse_count(p) for p in text.split(",") if p.strip()]


def main(argv=None) -> int:
    from offload.cli.units import parse_bytes
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="32k,128k,200k,500k")
    ap.add_argument("--prefill-lengths", default="32k,128k")
    ap.add_argument("--hf-lengths", default="32k,128k")
    ap.add_argument("--dense-lengths", default="32k")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--gpu-mem", default="24G", help="GPU memory planned for and allowed (the 4090 stand-in)")
    ap.add_argument("--host-mem", default=None, help="host memory for the KV (default: the plan's)")
    ap.add_argument("--disk-dir", default=None)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU at 1k/2k: the same code")
    ap.add_argument("--json", default=None, help="append one JSON row per measurement to this file")
    ap.add_argument("--ahead-off-lengths", default="128k", help="decode rows again with the lookahead off")
    a = ap.parse_args(argv)
    if a.tiny:
        a.lengths, a.prefill_lengths, a.hf_lengths, a.dense_lengths, a.steps = "1k,2k", "1k", "1k", "1k", 3
        a.ahead_off_lengths = "2k"
    a.gpu_mem = parse_bytes(a.gpu_mem)
    a.host_mem = parse_bytes(a.host_mem) if a.host_mem else None
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":  # the cap: what a 24 GB card would let this process allocate
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.gpu_mem / total), device)
    hf = build(TINY if a.tiny else LLAMA_8B, device, dtype)
    if a.tiny:  # a "GPU" whose hot set holds 1k tokens' KV but not 2k: exact at 1k, sparse at 2k
        a.gpu_mem = _tiny_gpu_mem(hf, a)
    bw = {"hbm_gbps": round(copy_gbps(device, host=False), 1), "h2d_gbps": round(copy_gbps(device, host=True), 1)}
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."), "gpu_mem_gib": round(a.gpu_mem / GIB, 1), **bw,
            "torch": torch.__version__}  # fmt: skip
    print(json.dumps(meta))
    rows = []
    for n in _count(a.lengths):
        rows.append(decode_row(*configure(hf, n + a.steps + 8, a), n, a, bw))
    for n in _count(a.ahead_off_lengths):  # the lookahead's worth: the same row without it
        r = decode_row(*configure(hf, n + a.steps + 8, a, lookahead=False), n, a, bw)
        rows.append({**r, "row": r["row"] + ", lookahead off"})
    for n in _count(a.dense_lengths):
        rows.append(decode_row(*configure(hf, n + a.steps + 8, a, budget=None), n, a, bw))
    for n in _count(a.hf_lengths):
        rows.append(hf_row(hf, n, a))
    for n in _count(a.prefill_lengths):
        rows.append(prefill_row(configure(hf, n + 8, a)[0], n))
    cols = ["row", "ctx", "tok_s", "step_ms", "floor_ms", "decode_over_floor", "hit_rate", "misses_per_step",
            "miss_mb_per_step", "rounds_per_step", "stall_ms", "ahead_per_step", "peak_gpu_gib", "peak_host_gib", "disk_gib", "seconds"]  # fmt: skip
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in cols) + " |")
    print("\n".join(f"- {r['ctx']:,}: {r['why']}" for r in rows if "why" in r))
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**meta, **r}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
