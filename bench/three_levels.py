"""Attention recall of `token2` with its third level and without (fan=0), against one-level `token`,
at budgets where the third level engages (issue 25; bench/results/scale/recall-three-levels-8k.txt).

    python bench/three_levels.py --length 8k --budgets 1/64,1/128 [--model gemma3-270m]
"""

from __future__ import annotations

import argparse
import time

from offload import OffloadConfig, load_model
from offload.eval.modes import parse_budget, parse_length
from offload.eval.recall import attention_recall, format_recall_table
from offload.eval.sparse_policies import StorePolicy
from offload.loading import load_reference
from offload.sparse.policies.token import Token, TwoLevel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", default="8k")
    ap.add_argument("--budgets", default="1/64,1/128")
    ap.add_argument("--model", default=None, help="embedded model name or path (default: SmolLM2)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    n = parse_length(a.length)
    model = load_model(a.model, config=OffloadConfig(ctx=n + 64))
    policies = [StorePolicy("token", Token(), 1, 4, 64), StorePolicy("token2 (3 levels)", TwoLevel(), 1, 4, 64),
                StorePolicy("token2 fan=0 (2 levels)", TwoLevel(fan=0), 1, 4, 64)]  # fmt: skip
    t0 = time.time()
    budgets = [parse_budget(b) for b in a.budgets.split(",")]
    results = attention_recall(load_reference(model), model.tokenizer, policies, budgets, n_context=n, seed=a.seed)
    print(format_recall_table(results))
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
