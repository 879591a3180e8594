"""The one line printed after each answer: prompt and generation speed, memory per tier, hit rate."""

from __future__ import annotations

from offload.generate import GenerationResponse

__all__ = ["speed_line", "fmt_size"]


def fmt_size(n: int | float) -> str:
    """GiB from 1 GiB up, MiB below: 13 MB spilled reads `12.4 MiB`, not `0.0 GiB`."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _how(decode: str | None, threads: int) -> str:
    t = f"{threads} thread" + ("s" if threads != 1 else "")
    return f"{decode}, {t}" if decode else t


def speed_line(r: GenerationResponse, prompt_seconds: float | None = None, decode: str | None = None) -> str:
    """e.g. `prompt 8,000 tok in 32.1 s (249 tok/s) | gen 64 tok at 7.9 tok/s (sparse 1/16, 2 threads) |
    GPU 0.0 GiB, host 1.3 GiB, disk 13.0 MiB | hit 93 %`. decode: which decode ran (`decode_label`),
    with the CPU threads of its last step (`decode_threads`); GPU is the
    process peak; host is the process peak RSS; disk is the KV spilled to disk; the hit rate shows once
    the store counts hits."""
    secs = prompt_seconds if prompt_seconds is not None else r.prompt_tokens / max(r.prompt_tps, 1e-9)
    parts = [
        f"prompt {r.prompt_tokens:,} tok in {secs:.1f} s ({r.prompt_tps:,.0f} tok/s)",
        f"gen {r.generation_tokens:,} tok at {r.generation_tps:.1f} tok/s ({_how(decode, r.threads)})",
        f"GPU {fmt_size(r.peak_gpu_bytes)}, host {fmt_size(r.peak_host_bytes)}, "
        f"disk {fmt_size(r.kv.get('disk_bytes', 0))}",
    ]
    hits, misses = r.kv.get("hits"), r.kv.get("misses")
    if hits is not None and misses is not None and hits + misses:
        parts.append(f"hit {100 * hits / (hits + misses):.0f} %")
    return " | ".join(parts)
