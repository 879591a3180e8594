"""Reopening a saved session vs the prefill it replaces (same model, machine and run).

    python bench/session_reopen.py --tokens 4k --json bench/results/session-cpu.jsonl

Prefill: a Chat turn over a document of N tokens (1 new token generated). Save: `Chat.save_session`.
Load: `Chat.load_session` into a fresh Chat (what `offload-chat --session` and `/load` do)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import tempfile
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="4k")
    ap.add_argument("--kv-store", default="dense", choices=["dense", "tiered"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import offload
    from offload.cli.units import parse_count

    n = parse_count(a.tokens)
    model = offload.load_model(config=offload.OffloadConfig(ctx=n + 256, kv_store=a.kv_store))
    words = "The keeper wrote down the weather, the ships and the state of the lamp every evening. "
    text = words * (n // len(model.tokenizer(words)["input_ids"]) + 1)
    ids = model.tokenizer(text)["input_ids"][: n - 64]
    doc = model.tokenizer.decode(ids)
    with tempfile.TemporaryDirectory() as tmp, offload.Chat(model) as chat:
        t0 = time.perf_counter()
        chat.send(doc + "\n\nSummarize.", max_new_tokens=1)
        prefill = time.perf_counter() - t0
        path = os.path.join(tmp, "s")
        t0 = time.perf_counter()
        chat.save_session(path)
        save = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in os.scandir(path))
        with offload.Chat(model) as again:
            t0 = time.perf_counter()
            again.load_session(path)
            load = time.perf_counter() - t0
            assert again.n_tokens == chat.n_tokens
    row = {"bench": "session_reopen", "tokens": chat.n_tokens, "kv_store": a.kv_store,
           "prefill_s": round(prefill, 3), "save_s": round(save, 3), "load_s": round(load, 3),
           "load_speedup": round(prefill / load, 1), "session_bytes": size, "device": str(model.device),
           "dtype": str(model.dtype), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    print(f"{'tokens':>7} | {'prefill s':>9} | {'save s':>6} | {'load s':>6} | {'speedup':>7} | {'MiB':>6}")
    print(f"{row['tokens']:>7} | {prefill:>9.2f} | {save:>6.2f} | {load:>6.2f} | {row['load_speedup']:>6.1f}x | "
          f"{size / 2**20:>6.0f}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
