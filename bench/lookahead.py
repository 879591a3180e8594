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

--fetch: the lookahead fetch itself (tiers/lookahead.py) on a store whose hot set holds --hot times
the budget's rows (single-row token cache) and whose host memory holds half the body (the rest on
disk): the same greedy steps with it off and on (logits checked equal), per step: rows fetched on
demand, rows fetched ahead and those a step then read, the compute thread's waits, and the step's
median time on this machine.

    python bench/lookahead.py --fetch --lengths 4k,8k --budgets 1/16 --hot 3 --new 16 --threads 2
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
                h = inputs[layer - 1][0]  # layer l-1's input, at layer l's position embedding
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


def _fetch_run(model, ids, tokens, hot, disk_dir, lookahead, new):
    """Greedy steps on a store with a token cache of `hot` x the budget's rows, half the body on disk:
    (the logits, per-step counters and median ms)."""
    import dataclasses
    import tempfile
    import time

    from offload.config import SparseConfig
    from offload.engine import Engine
    from offload.store_spec import StoreSpec

    n_layers, n_kv, d = model.kv_shape()
    base = model.config.replace(sparse=SparseConfig(budget=tokens, policy="token", lookahead=lookahead),
                                ctx=len(ids) + new + 8, kv_store="tiered")  # fmt: skip
    chunk, item = StoreSpec.chunk_of(base), model.dtype.itemsize
    host = len(ids) // chunk // 2 * n_layers * 2 * n_kv * chunk * d * item  # half the body
    hot_bytes = int(hot * tokens) * n_kv * n_layers * StoreSpec.token_slot_bytes(d, item)
    cfg = base.replace(hot_set_bytes=hot_bytes, host_mem=host, disk_dir=tempfile.mkdtemp(dir=disk_dir))
    m = dataclasses.replace(model, config=cfg)
    store = m.new_store()
    assert store.token_cache is not None, "the hot set holds the whole context: nothing to fetch"
    try:
        engine = Engine(m, store)
        logits, times, out, before = engine.prefill(ids), [], [], None
        for i in range(new + 1):  # step 0 fills the empty cache: left out
            if i == 1:
                before = store.stats()
            t0 = time.perf_counter()
            logits = engine.decode(int(logits.argmax()))
            times.append(time.perf_counter() - t0)
            out.append(logits)
        after = store.stats()
        keys = ("token_misses", "token_ahead", "token_ahead_hits", "ahead_wait_s", "stall_s", "rounds")
        per = {k: (after[k] - before[k]) / new for k in keys}
        per["ms"] = 1e3 * statistics.median(times[1:])
        return out, per
    finally:
        store.close()


FETCH_HEAD = ("| context | budget | hot set | lookahead | rows on demand / step | ahead / step | of them read | "
              "wait ms / step | stall ms / step | ms / step |\n|---|---|---|---|---|---|---|---|---|---|")


def fetch_table(a, grid):
    """--fetch: the same greedy steps with the lookahead off and on (logits equal), a row each."""
    import tempfile

    with tempfile.TemporaryDirectory() as disk_dir:
        for model, n, ids, b, budget in grid:
            tokens = budget if isinstance(budget, int) else int(budget * len(ids))
            for hot in [float(h) for h in a.hot.split(",")]:
                ref = None
                for on in (False, True):
                    out, r = _fetch_run(model, ids, tokens, hot, disk_dir, on, a.new)
                    if ref is None:
                        ref = out
                    else:
                        assert all(torch.equal(x, y) for x, y in zip(ref, out)), "the lookahead changed logits"
                    print(f"| {n:,} | {b} | {hot:g}x | {'on' if on else 'off'} | {r['token_misses']:.0f} | "
                          f"{r['token_ahead']:.0f} | {r['token_ahead_hits'] / max(1, r['token_ahead']):.2f} | "
                          f"{1e3 * r['ahead_wait_s']:.1f} | {1e3 * r['stall_s']:.1f} | {r['ms']:.0f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fetch", action="store_true", help="measure the lookahead fetch (see above)")
    ap.add_argument("--hot", default="3", help="--fetch: hot set sizes, in multiples of the budget's rows")
    grid = text_grid(ap, lambda a: FETCH_HEAD if a.fetch else "| context | budget | new picks | named by l-1's picks | named by lookahead | lookahead rows "
                         "copied / pick | of them picked | mass: own picks | mass: lookahead's |\n"
                         "|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    a = next(grid)
    if a.fetch:
        return fetch_table(a, grid)
    for model, n, ids, b, budget in grid:
        r = measure(model, ids, budget, a.new)
        print(f"| {n:,} | {b} | {r['fresh']:.3f} | {r['below']:.2f} | {r['ahead']:.2f} | {r['copied']:.3f} | "
              f"{r['precision']:.2f} | {r['mass_own']:.3f} | {r['mass_ahead']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
