#!/usr/bin/env python
"""The ceiling of attention recall at a budget: what the best possible selection keeps.

Question: is the issue's recall target reachable at all at this budget on this model? For each layer
and teacher-forced decode step (the recall harness's setup: `offload.eval.recall`, natural text), the
exact attention is known; the best selection of `budget` tokens per KV head beyond the sinks and the
window takes the units (single tokens, or C-token chunks) holding the most mass, summed over the query
group. Recall = mass inside sinks + window + those units, averaged over query heads, steps and layers.
No policy can beat the C = 1 column at that budget; C = 16 is the chunk oracle of `offload-eval
--recall` (it differs in the third decimal: the harness lays the window's partial tail out as the
store does).

    python bench/recall_ceiling.py --context 4096 --budgets 1/16,1/32 --chunks 1,4,16
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction

import torch

from _common import parse_with_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--budgets", default="1/16,1/32")
    ap.add_argument("--chunks", default="1,4,16")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = parse_with_threads(ap)
    import offload
    from offload.eval.recall import capture_qk, natural_ids
    from offload.loading import load_reference

    model = offload.load_model(config=offload.OffloadConfig(ctx=args.context + args.steps + 64))
    ids = natural_ids(model.tokenizer, args.context + args.steps, 0)
    captured, _ = capture_qk(load_reference(model), ids, args.steps)
    chunks = [int(c) for c in args.chunks.split(",")]
    s, w = args.sinks, args.window
    for text in args.budgets.split(","):
        budget = math.ceil(Fraction(text) * args.context)
        per_chunk = {c: 0.0 for c in chunks}
        for layer, (q, k, scaling) in captured.items():
            n_kv, _, d = k.shape
            g = q.shape[0] // n_kv
            for j in range(args.steps):
                t = args.context + j + 1
                p = torch.softmax(torch.einsum("kgd,ktd->kgt", q[:, j].reshape(n_kv, g, d), k[:, :t]) * scaling, -1)
                fixed = (p[:, :, :s].sum(-1) + p[:, :, t - w :].sum(-1)).sum(1)  # [Hkv], group summed
                body = p[:, :, s : t - w].sum(1)  # [Hkv, n]
                for c in chunks:
                    n = body.shape[1] // c * c
                    best = body[:, :n].reshape(n_kv, -1, c).sum(-1).topk(budget // c, -1).values.sum(-1)
                    per_chunk[c] += float(((fixed + best) / g).mean())
        norm = len(captured) * args.steps
        cells = ", ".join(f"C={c}: {v / norm:.3f}" for c, v in per_chunk.items())
        print(f"context {args.context}, budget {text} ({budget} tokens beyond {s} sinks + {w} window): best recall {cells}")


if __name__ == "__main__":
    main()
