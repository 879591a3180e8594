#!/usr/bin/env python
"""Could a fetch for layer l run ahead, under layer l-1's attention? It needs layer l's picks named
before layer l runs. Two guesses, both known by the time layer l-1 starts:

- below: layer l-1's own picks at the same step, same KV head (row_prefetch.py measured it);
- lookahead (InfiniGen's idea, REFERENCES.md): layer l's selector run on the query layer l would
  compute from layer l-1's *input* (`offload.next_query`: the residual stream moves little per layer).

SmolLM2 on a natural-text prompt, the default sparse config (`token`, adaptive split), the budget a
token count. Means over --new greedy steps and the selecting layers above the first of
- new picks: picks (row, position) the layer did not pick at the previous step — what a cache of
  the previous selection misses;
- of those, the share each guess names (what a prefetch would have in flight);
- the guess's rows not held (not picked at the previous step), per pick: what the prefetch copies;
  and the share of them the layer then picks (its precision);
- mass: the exact attention mass (sinks + window + the picks, mean over query heads) of the layer's
  real query inside its own picks, and inside the lookahead's picks — were the guess used as the
  selection (one selection per layer step, fetched a layer ahead).

    python bench/lookahead.py --lengths 4k,8k --budgets 1/16,1/32 --new 8 --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import statistics

import torch
from _common import text_grid


def _sets(chosen: torch.Tensor) -> list[set[int]]:
    return [set(r[r >= 0].tolist()) for r in chosen]


def _mass(q, keys, scaling, picks, lay, n) -> float:
    """Mean over query heads of the exact softmax mass of q [1, H, D] over keys [1, Hkv, n, D] that
    falls on the sinks, the window and body picks [Hkv, k] (-1: none)."""
    hkv = keys.shape[1]
    g = q.shape[1] // hkv
    s = torch.einsum("kgd,knd->kgn", q[0].float().view(hkv, g, -1), keys[0].float()) * scaling
    p = torch.softmax(s, dim=-1)  # [Hkv, G, n]
    keep = torch.zeros(hkv, n + 1, dtype=torch.bool)
    keep[:, : lay.sink_len(n)] = True
    keep[:, lay.sinks + lay.body_chunks(n) * lay.chunk : n] = True
    keep.scatter_(1, torch.where(picks >= 0, picks + lay.sinks, n), True)
    return float((p * keep[:, None, :n]).sum(-1).mean())


@torch.inference_mode()
def measure(model, ids: list[int], budget, new: int) -> dict:
    from offload.config import SparseConfig
    from offload.engine import Engine
    from offload.next_query import next_query
    from offload.sparse import make_policy

    tokens = budget if isinstance(budget, int) else int(budget * len(ids))
    cfg = model.config.replace(sparse=SparseConfig(budget=tokens, policy=make_policy("token")), ctx=len(ids) + new + 8)
    m = model.__class__(hf=model.hf, tokenizer=model.tokenizer, model_dir=model.model_dir, config=cfg)
    store = m.new_store()
    sel, lay = store.selector, store.layout
    seen: dict = {}
    select = sel.select

    def spy(layer, q, n_chunks, n_tokens, scaling=None):
        out = select(layer, q, n_chunks, n_tokens, scaling)
        if out is not None:
            seen[layer] = (out, q, n_chunks, n_tokens, scaling)
        return out

    sel.select = spy
    engine = Engine(m, store)
    inputs: dict = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, a, kw, i=i: inputs.__setitem__(i, (a[0], kw)),
                                             with_kwargs=True) for i, layer in enumerate(engine._layers)]  # fmt: skip
    out = {k: [] for k in ("fresh", "below", "ahead", "copied", "precision", "mass_own", "mass_ahead")}
    try:
        tok = int(engine.prefill(ids).argmax())
        prev: dict = {}
        for _ in range(new):
            seen.clear()
            tok = int(engine.decode(tok).argmax())
            cur = {layer: _sets(v[0]) for layer, v in seen.items()}
            for layer, (chosen, q, n_chunks, n_tokens, scaling) in seen.items():
                if layer - 1 not in inputs or layer not in prev or layer - 1 not in cur:
                    continue
                h, kw = inputs[layer - 1]  # layer l-1's input, at layer l's position embedding
                q_ahead, _ = next_query(engine._layers[layer], h, inputs[layer][1]["position_embeddings"],
                                        engine._cache_kw)  # fmt: skip
                guess = sel.predict(layer, q_ahead[:, :, 0].contiguous(), n_chunks, n_tokens, scaling)
                if guess is None:
                    continue
                ahead = _sets(guess)
                rows = cur[layer]
                fresh = [(r, p) for r, ps in enumerate(rows) for p in ps - prev[layer][r]]
                picks = sum(map(len, rows))
                if not fresh:
                    continue
                copied = [(r, p) for r, ps in enumerate(ahead) for p in ps - prev[layer][r]]
                out["fresh"].append(len(fresh) / picks)
                out["below"].append(sum(p in cur[layer - 1][r] for r, p in fresh) / len(fresh))
                out["ahead"].append(sum(p in ahead[r] for r, p in fresh) / len(fresh))
                out["copied"].append(len(copied) / picks)
                out["precision"].append(sum(p in rows[r] for r, p in copied) / max(1, len(copied)))
                keys = store.read_layer(layer)[0]
                n = keys.shape[2]
                out["mass_own"].append(_mass(q, keys, scaling, chosen, lay, n))
                out["mass_ahead"].append(_mass(q, keys, scaling, guess, lay, n))
            prev = cur
    finally:
        for hk in hooks:
            hk.remove()
        store.close()
    return {k: statistics.fmean(v) if v else float("nan") for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = text_grid(ap, "| context | budget | new picks | named by l-1's picks | named by lookahead | lookahead rows "
                         "copied / pick | of them picked | mass: own picks | mass: lookahead's |\n"
                         "|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    a = next(grid)
    for model, n, ids, b, budget in grid:
        r = measure(model, ids, budget, a.new)
        print(f"| {n:,} | {b} | {r['fresh']:.3f} | {r['below']:.2f} | {r['ahead']:.2f} | {r['copied']:.3f} | "
              f"{r['precision']:.2f} | {r['mass_own']:.3f} | {r['mass_ahead']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
