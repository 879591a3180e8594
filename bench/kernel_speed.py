"""Kernel speed on a CUDA GPU: sparse decode attention against its baselines.

Question: does sparse decode attention over S selected tokens run near HBM speed (goal: >= 60 % of
the measured device-to-device copy bandwidth at S >= 4k), and how does it compare with SDPA on the
same KV already gathered contiguously, gather + SDPA, and dense SDPA over the whole context?

GB/s counts the bytes a kernel must move: K and V of the attended tokens (attention), read + write
(device copy). Times are medians of triton.testing.do_bench, which clears
L2 before every run. Default shapes: Llama-3.1-8B (32 q heads, 8 KV heads, head dim 128), bf16.

    python bench/kernel_speed.py --selected 1k,2k,4k,8k,16k --context 128k --json bench/results/kernels.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _count(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def _ms(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _copy_gbps(dev) -> float:
    """Device-to-device copy of 1 GiB: (read + write) bytes / time."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms = _ms(lambda: dst.copy_(src))
    del src, dst
    return 2 * (1 << 30) / ms / 1e6


def _decode_rows(a, dev, dtype, copy_gbps):
    from offload.kernels.reference import sparse_decode_attention_ref
    from offload.kernels.sparse_decode import sparse_decode_attention_triton

    g = torch.Generator(device=dev).manual_seed(0)
    b, h, n_kv, d, c = a.batch, a.heads, a.kv_heads, a.head_dim, a.chunk
    n_extra = a.sinks + a.window
    width = max(a.selected) // c
    n_slots = 2 * width  # selections are scattered over a pool twice their size
    k_pool = torch.randn(n_slots, n_kv, c, d, device=dev, generator=g).to(dtype)
    v_pool = torch.randn(n_slots, n_kv, c, d, device=dev, generator=g).to(dtype)
    q = torch.randn(b, h, d, device=dev, generator=g).to(dtype)
    xk = torch.randn(b, n_kv, n_extra, d, device=dev, generator=g).to(dtype)
    xv = torch.randn(b, n_kv, n_extra, d, device=dev, generator=g).to(dtype)
    xlen = torch.full((b,), n_extra, dtype=torch.int32, device=dev)
    # a different random selection per (sequence, KV head), as the scorer produces
    table = torch.argsort(torch.rand(b, n_kv, n_slots, device=dev, generator=g), dim=-1)[..., :width]
    table = table.to(torch.int32).contiguous()
    elem = torch.tensor([], dtype=dtype).element_size()
    ctx = a.context
    kd = torch.randn(b, n_kv, ctx, d, device=dev, generator=g).to(dtype)
    vd = torch.randn(b, n_kv, ctx, d, device=dev, generator=g).to(dtype)
    q4 = q[:, :, None, :]
    dense_ms = _ms(lambda: F.scaled_dot_product_attention(q4, kd, vd, enable_gqa=True))
    dense_gbps = 2 * b * n_kv * ctx * d * elem / dense_ms / 1e6
    del kd, vd
    rows = []
    for sel in a.selected:
        n_chunks = sel // c
        bt = table[..., :n_chunks].contiguous()
        body = torch.full((b, n_kv), n_chunks * c, dtype=torch.int32, device=dev)
        args = (q, k_pool, v_pool, bt, body, xk, xv, xlen)
        out, _ = sparse_decode_attention_triton(*args)
        err = (out.float() - sparse_decode_attention_ref(*args)[0].float()).abs().max().item()
        ms = _ms(lambda: sparse_decode_attention_triton(*args))
        # the same tokens gathered contiguously: [B, Hkv, S + extra, D]
        heads = torch.arange(n_kv, device=dev)[None, :, None]

        def gather():
            kg = k_pool[bt.long(), heads].flatten(2, 3)
            vg = v_pool[bt.long(), heads].flatten(2, 3)
            return torch.cat([kg, xk], 2), torch.cat([vg, xv], 2)

        kg, vg = gather()
        sdpa_ms = _ms(lambda: F.scaled_dot_product_attention(q4, kg, vg, enable_gqa=True))

        def gather_sdpa():
            k2, v2 = gather()
            return F.scaled_dot_product_attention(q4, k2, v2, enable_gqa=True)

        gather_sdpa_ms = _ms(gather_sdpa)
        nbytes = 2 * b * n_kv * (n_chunks * c + n_extra) * d * elem
        gbps = nbytes / ms / 1e6
        rows.append(dict(
            op="sparse_decode", selected=n_chunks * c, extra=n_extra, context=ctx,
            sparse_ms=round(ms, 4), sparse_gbps=round(gbps, 1), vs_copy=round(gbps / copy_gbps, 3),
            sdpa_gathered_ms=round(sdpa_ms, 4), sdpa_gathered_gbps=round(nbytes / sdpa_ms / 1e6, 1),
            gather_sdpa_ms=round(gather_sdpa_ms, 4), dense_sdpa_ms=round(dense_ms, 4),
            dense_sdpa_gbps=round(dense_gbps, 1), max_abs_err_vs_ref=err,
        ))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selected", default="1k,2k,4k,8k,16k", help="selected body tokens (chunk multiples)")
    ap.add_argument("--context", default="128k", help="dense SDPA baseline context")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    ap.add_argument("--json", default=None, help="append one JSON row per measurement to this file")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernel_speed.py measures Triton kernels and needs a CUDA GPU, but torch sees none "
                 f"(torch {torch.__version__}, cuda available: False). Run it on a machine with an NVIDIA GPU.")
    a.selected = [_count(x) // a.chunk * a.chunk for x in a.selected.split(",")]
    a.context = _count(a.context)
    if min(a.selected) < a.chunk or a.heads % a.kv_heads:
        sys.exit("--selected must be >= --chunk tokens and --heads a multiple of --kv-heads")
    dev = torch.device("cuda")
    dtype = _DTYPES[a.dtype]
    common = dict(
        bench="kernels", gpu=torch.cuda.get_device_name(dev), dtype=a.dtype, batch=a.batch, heads=a.heads,
        kv_heads=a.kv_heads, head_dim=a.head_dim, chunk=a.chunk, torch=torch.__version__,
        command=" ".join(sys.argv), date=time.strftime("%Y-%m-%d"),
    )
    import triton

    common["triton"] = triton.__version__
    copy_gbps = _copy_gbps(dev)
    print(f"{common['gpu']}: device-to-device copy {copy_gbps:.0f} GB/s (read + write)")
    rows = [dict(op="d2d_copy", copy_gbps=round(copy_gbps, 1))]
    print(f"{'selected':>8} | {'sparse ms':>9} | {'GB/s':>6} | {'vs copy':>7} | {'sdpa gathered ms':>16} | "
          f"{'gather+sdpa ms':>14} | {'dense ms':>8} | {'max err':>8}")
    for r in _decode_rows(a, dev, dtype, copy_gbps):
        rows.append(r)
        print(f"{r['selected']:>8} | {r['sparse_ms']:>9.4f} | {r['sparse_gbps']:>6.0f} | {r['vs_copy']:>7.2f} | "
              f"{r['sdpa_gathered_ms']:>16.4f} | {r['gather_sdpa_ms']:>14.4f} | {r['dense_sdpa_ms']:>8.4f} | "
              f"{r['max_abs_err_vs_ref']:>8.1e}", flush=True)
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**common, **r}) + "\n")


if __name__ == "__main__":
    main()
