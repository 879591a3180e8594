"""Tier speeds and the decode trace the tier design choices replay (`bench/tier_choices.py`), each a
subcommand.

    python bench/tiers.py disk      # scattered chunk reads from the mmap'd disk tier, warm and cold
    python bench/tiers.py codec     # shuffle+zstd-1 compress / decompress GB/s and ratio per dtype
    python bench/tiers.py session   # save / load of a 4k-token SmolLM2-sized store vs its prefill
    python bench/tiers.py h2d       # CUDA only: pinned contiguous H2D vs N scattered chunks -> slots
    python bench/tiers.py capture   # real decode attention of SmolLM2 on 4k tokens -> --trace file

Each prints one table; `--json FILE` appends one JSON row per table line (codec and session use the
trace's KV when there is one). Traces are teacher-forced:
the model reads the last `--steps` tokens of a real text one position at a time (as decode does) and
we keep, per layer, step and KV head, the attention mass on every key.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import random
import sys
import tempfile
import time

import torch
from _common import emit

from offload.config import OffloadConfig
from offload.hf_compat import cache_keyword, output_cache
from offload.tiers.codec import ChunkCodec
from offload.tiers.disk import DiskStore
from offload.tiers.layout import ChunkLayout
from offload.tiers.spill import SpillDir
from offload.tiers.transfer import Transfer

PREFILL_4K_S = 11.6  # DESIGN.md: SmolLM2 fp32 prefill of 4k tokens on this CPU
TEXT = "/usr/share/common-licenses/GPL-3"  # real English prose, on every Debian machine


def _kv_like(shape, dtype, seed=0):
    """KV-like values: per-channel scales and offsets (the mean direction dominates real keys)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * (0.5 + torch.rand(shape[-1], generator=g) * 3)
    return (x + torch.randn(shape[-1], generator=g) * 2).to(dtype)


# -- disk ---------------------------------------------------------------------------------------
def bench_disk(args):
    rows = []
    for c in (16, 32, 64, 128):  # Llama-3.1-8B geometry: 8 KV heads x 128, bf16 -> C x 4 KiB per chunk
        lay = ChunkLayout(1, rows=8, chunk=c, head_dim=128, dtype=torch.bfloat16)
        n = args.disk_mb * 2**20 // lay.chunk_bytes
        chunk = _kv_like(lay.chunk_shape, lay.dtype)
        for compress in (False, True):
            disk = DiskStore(lay, SpillDir(args.disk_dir), compress)
            t0 = time.perf_counter()
            for j in range(n):
                disk.append(0, j, chunk)
            disk.flush()
            write = n * lay.chunk_bytes / (time.perf_counter() - t0) / 1e9
            out = torch.empty(lay.chunk_shape, dtype=lay.dtype)
            order = random.Random(0).sample(range(n), min(n, args.reads))
            for state in ("warm", "cold"):
                if state == "cold":
                    disk.evict_page_cache()
                t0 = time.perf_counter()
                for j in order:
                    disk.read_into(0, j, out)
                gbs = len(order) * lay.chunk_bytes / (time.perf_counter() - t0) / 1e9
                rows.append({"chunk": c, "chunk_KiB": lay.chunk_bytes // 1024, "zstd": compress,
                             "cache": state, "read_GB/s": gbs, "write_GB/s": write})  # fmt: skip
            disk.close()
    emit(args, "disk: scattered chunk reads (decoded into a host buffer, CRC checked)", rows)


# -- codec --------------------------------------------------------------------------------------
def bench_codec(args):
    rows = []
    src = _load_kv(args)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        x = (src if src is not None else _kv_like((2, 8, 4096, 128), torch.float32)).to(dtype)
        per = 2 * 8 * 64 * 128  # elements of one Llama-8B-sized chunk (64 tokens, 8 KV heads x 128)
        flat = x.reshape(-1)  # SmolLM2's KV bytes, cut to 8B-sized chunks (ratio depends on values)
        chunks = [flat[a : a + per].contiguous() for a in range(0, flat.numel() - per + 1, per)]
        codec = ChunkCodec(itemsize=x.element_size(), compress=True)
        t0 = time.perf_counter()
        enc = [codec.encode(c) for c in chunks]
        ct = time.perf_counter() - t0
        out = torch.empty_like(chunks[0])
        t0 = time.perf_counter()
        for p, comp, crc in enc:
            codec.decode_into(p, comp, crc, out)
        dt = time.perf_counter() - t0
        raw = sum(c.numel() * c.element_size() for c in chunks)
        rows.append({"dtype": str(dtype)[6:], "data": "SmolLM2 KV" if src is not None else "synthetic",
                     "ratio": raw / sum(len(p) for p, _, _ in enc),
                     "compress_GB/s": raw / ct / 1e9, "decompress_GB/s": raw / dt / 1e9})  # fmt: skip
    emit(args, "codec: byte-shuffle + zstd level 1 + CRC per 256 KiB (bf16) chunk, 1 core", rows)


# -- session ------------------------------------------------------------------------------------
def bench_session(args):
    from offload.kvstore import DenseKVStore
    from offload.session import load_session, save_session

    kv = _load_kv(args, all_layers=True)  # [30, 2, 3, 4096, 64] fp32
    n_layers, n = 30, 4096
    rows = []
    for kind in ("dense", "tiered"):
        store = DenseKVStore(n_layers, 3, 64, torch.float32, "cpu")
        for layer in range(n_layers):
            x = kv[layer] if kv is not None else _kv_like((2, 3, n, 64), torch.float32, layer)
            store.append(layer, x[0][None], x[1][None])
        cfg = OffloadConfig(kv_store=kind, ctx=8192, device="cpu")
        with tempfile.TemporaryDirectory(dir=args.disk_dir) as tmp:
            path = os.path.join(tmp, "s")
            t0 = time.perf_counter()
            save_session(path, store, list(range(n)), "fp")
            save = time.perf_counter() - t0
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
            t0 = time.perf_counter()
            loaded, _ = load_session(path, "fp", cfg, device="cpu")
            load = time.perf_counter() - t0
            loaded.close()
        rows.append({"store": kind, "MB": size / 1e6, "save_s": save, "load_s": load,
                     "prefill_s": PREFILL_4K_S, "prefill/load": PREFILL_4K_S / load})  # fmt: skip
    emit(args, "session: 4k tokens, 30 layers x 3 KV heads x 64, fp32", rows)


# -- h2d ----------------------------------------------------------------------------------------
def bench_h2d(args):
    if not torch.cuda.is_available():
        sys.exit("h2d needs a CUDA device: torch sees none on this machine (nothing measured)")
    dev = torch.device("cuda")
    rows = []
    for c in (16, 32, 64, 128):
        lay = ChunkLayout(1, rows=8, chunk=c, head_dim=128, dtype=torch.bfloat16)
        n_host, n = 4 * args.slots, args.slots
        host = torch.empty((n_host, *lay.chunk_shape), dtype=lay.dtype, pin_memory=True)
        pool = torch.empty((n, *lay.chunk_shape), dtype=lay.dtype, device=dev)
        flat = torch.empty(n * lay.chunk_bytes // 2, dtype=lay.dtype, pin_memory=True)
        dst = torch.empty_like(flat, device=dev)
        ids = random.Random(0).sample(range(n_host), n)
        stream = torch.cuda.Stream()

        def timed(fn, reps=20):
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                with torch.cuda.stream(stream):
                    fn()
            torch.cuda.synchronize()
            return n * lay.chunk_bytes * reps / (time.perf_counter() - t0) / 1e9

        contiguous = timed(lambda: dst.copy_(flat, non_blocking=True))
        xfer = Transfer(dev, lay)  # the store's own miss path: copy stream + events

        def scatter():
            xfer.begin(0)
            for s, i in enumerate(ids):
                xfer.upload(host[i], pool[s])
            xfer.ready(0)

        scattered = timed(scatter)
        rows.append({"chunk": c, "chunk_KiB": lay.chunk_bytes // 1024, "chunks": n,
                     "contig_GB/s": contiguous, "scatter_GB/s": scattered,
                     "ratio": scattered / contiguous})  # fmt: skip
    emit(args, f"h2d: pinned host -> {torch.cuda.get_device_name()} (goal: scatter >= 70 % of contig)", rows)


# -- capture ------------------------------------------------------------------------------------
def _model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offload.loading import resolve_model_dir

    path = resolve_model_dir(None)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(path)


def bench_capture(args):
    model, tok = _model()
    text = open(TEXT).read()
    ids = tok(text * 2, return_tensors="pt").input_ids[:, : args.ctx]
    prompt, steps = ids[:, : -args.steps], ids[:, -args.steps :]
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True)
        print(f"prefill {prompt.shape[1]} tokens: {time.perf_counter() - t0:.1f} s")
        cache = output_cache(out)
        kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
        model.set_attn_implementation("eager")
        out = model(steps, output_attentions=True, **{cache_keyword(model): cache})  # teacher-forced decode
    g = model.config.num_attention_heads // model.config.num_key_value_heads
    # per layer: [H, steps, keys] -> mean over each KV head's query group: [Hkv, steps, keys]
    att = torch.stack([a[0].unflatten(0, (-1, g)).mean(1) for a in out.attentions]).half()
    kv = kv[:, :, :, : prompt.shape[1]].clone()  # [L, 2, Hkv, prompt, D]: the prompt's KV
    torch.save({"attention": att, "kv": kv, "prompt": prompt.shape[1]}, args.trace)
    print(f"saved {args.trace}: attention {tuple(att.shape)} [layers, Hkv, steps, keys]")


def _load_kv(args, all_layers=False):
    if not os.path.exists(args.trace):
        return None
    kv = torch.load(args.trace)["kv"]  # [L, 2, Hkv, n, D] fp32, pre-capture prefill
    return kv if all_layers else kv[12]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["disk", "codec", "session", "h2d", "capture"])
    ap.add_argument("--json", help="append result rows to this JSONL file")
    ap.add_argument("--trace", default=os.path.join(tempfile.gettempdir(), "offload-trace.pt"))
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=256, help="capture: teacher-forced decode steps")
    ap.add_argument("--disk-dir", default=None, help="spill root (default: the cache's spill dir)")
    ap.add_argument("--disk-mb", type=int, default=256)
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=256, help="h2d: chunks gathered per copy")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    globals()[f"bench_{args.what}"](args)


if __name__ == "__main__":
    main()
