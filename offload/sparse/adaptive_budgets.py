"""Per-layer budgets that keep the most attention: the `adaptive` split (SparseConfig.split).

A uniform budget gives every layer the same k tokens, but layers differ: a copy head's layer holds
almost all of its attention in 1/32 of the context, a diffuse one much less in 1/16
(bench/results/recall-smollm2.txt). At
prefill the store sees the prompt's last queries attend (the `Selector` observes them for whole
layers and snapkv); per layer, the best-possible recall of k body tokens — sinks and window always
kept, then the k keys with the most of that attention — is a concave curve in k (sorted gains).
Budgets that maximize the sum of those curves under a fixed total are found greedily: the steepest
pieces of all curves first (water-filling; exact for concave curves). Every layer keeps a floor of
`FLOOR_SHARE` of the uniform budget: decode queries are not the prompt's (they move between steps,
bench/query_drift.py), and a layer whose prompt queries looked away may still need a needle.

The unit of the split is the layer, or (token selections) each row — KV head — of every layer:
heads of one layer differ as much as layers do (bench/results/sparse-smollm2.md, session 9).
Curves are kept as recall at `POINTS` + 1
values of k (denser where budgets live, at small k): a few KB per layer at any context. Whole
layers (whole_layers.py) read their whole context whatever their budget: they take no part and
keep the uniform one. `adaptive_split` also reads whole a layer the split would give, per unit, at
least `WIDE_SHARE` of its body: selecting that much costs more than reading it all, and is not
exact (SmolLM2's layer 0 at 8k, 1/16: bench/results/sparse-smollm2.md, session 10).
"""

from __future__ import annotations

import numpy as np
import torch

from .whole_layers import MAX_SHARE

__all__ = ["mass_curve", "adaptive_budgets", "adaptive_split", "FLOOR_SHARE", "POINTS", "WIDE_SHARE"]

FLOOR_SHARE = 0.25  # least budget of a layer relative to the uniform one
POINTS = 128  # pieces of a stored curve
WIDE_SHARE = 0.25  # a layer whose units would read this share of its body on average is read whole


def mass_curve(mass: torch.Tensor, sinks: int, body: int, points: int = POINTS,
               per_row: bool = False) -> torch.Tensor:  # fmt: skip
    """mass [B, Hkv, n]: attention mass of the observed queries per key (all n keys visible);
    the body is keys [sinks, sinks + body). Returns [1 + U, P] fp32 on the CPU: row 0 the values of
    k (body tokens, 0 .. body, increasing), then per unit the best recall with k body tokens — one
    unit, the mean over rows, or (per_row) each of the B*Hkv rows (KV heads) on its own."""
    b, h, _ = mass.shape
    m = mass.float()
    total = m.sum(-1, keepdim=True).clamp(min=1e-30)
    gains = (m[:, :, sinks : sinks + body] / total).reshape(b * h, body)
    cum = gains.sort(-1, descending=True).values.cumsum(-1)  # [R, body]: recall of the body part
    fixed = 1.0 - gains.sum(-1, keepdim=True)  # [R, 1]: sinks + window (and what lies past the body)
    if not per_row:
        cum, fixed = cum.mean(0, keepdim=True), fixed.mean(0, keepdim=True)
    ks = torch.unique((torch.linspace(0, 1, points + 1) ** 2 * body).round().long())
    rec = torch.cat([torch.zeros(len(cum), 1), cum], 1)[:, ks] + fixed
    return torch.cat([ks.float()[None], rec.cpu()])


def adaptive_budgets(base: int, curves: list, whole=frozenset(),
                     floor_share: float = FLOOR_SHARE) -> list[list[int]]:  # fmt: skip
    """Budget per layer and unit (`mass_curve`: one per layer, or one per row), summing to at most
    base * (number of units): whole layers and layers without a curve keep [base]; every other unit
    gets floor(base * floor_share), then the rest of the total goes to the steepest pieces of all
    curves, and what the curves cannot take (a context grown past the prompt's) evenly.
    Host arithmetic on numpy arrays (a tensor curve is read as one): a decode step that re-splits
    reads no tensor value (`BudgetPlan` hands it the host copies)."""
    curves = [None if c is None else np.asarray(c, dtype=np.float32) for c in curves]
    out: list[list[int]] = [[base] for _ in curves]
    live = [(i, u) for i, c in enumerate(curves) if c is not None and i not in whole
            for u in range(len(c) - 1)]  # (layer, unit) pairs that take part
    if not live:
        return out
    floor = int(base * floor_share)
    spare = (base - floor) * len(live)
    owner, size, slope = [], [], []
    for j, (i, u) in enumerate(live):
        ks, rec = curves[i][0], curves[i][1 + u]
        lo = np.maximum(ks[:-1], np.float32(floor))
        dk = np.maximum(ks[1:] - lo, np.float32(0))  # each piece's part above the floor
        keep = dk > 0
        owner.append(np.full(int(keep.sum()), j))
        size.append(dk[keep])
        slope.append(((rec[1:] - rec[:-1]) / np.maximum(ks[1:] - ks[:-1], np.float32(1)))[keep])
    owner, size, slope = np.concatenate(owner), np.concatenate(size), np.concatenate(slope)
    order = np.argsort(-slope, kind="stable")  # steepest first, ties in curve order
    upto = np.cumsum(size[order], dtype=np.float64)  # tokens handed out once each piece is taken whole
    taken = np.minimum(upto, spare) - np.minimum(upto - size[order], spare)  # what each piece gets
    got = (floor + np.bincount(owner[order], weights=taken, minlength=len(live))).astype(np.int64).tolist()
    each, extra = divmod(max(0, base * len(live) - sum(got)), len(live))
    for j, (i, u) in enumerate(live):
        if u == 0:
            out[i] = []
        out[i].append(got[j] + each + (1 if j < extra else 0))
    return out


def adaptive_split(base: int, curves: list, whole=frozenset(),
                   wide: bool = True) -> tuple[list[list[int]], frozenset[int]]:  # fmt: skip
    """(`adaptive_budgets`, the whole layers): with `wide`, a layer whose units the split gives on
    average at least WIDE_SHARE of the body its curve spans joins the whole layers (the widest first,
    as many as whole_layers' cap leaves room for) and the split is made again without it."""
    whole = frozenset(whole)
    curves = [None if c is None else np.asarray(c, dtype=np.float32) for c in curves]
    cap = max(1, len(curves) // MAX_SHARE)
    while True:
        split = adaptive_budgets(base, curves, whole)
        if not wide or len(whole) >= cap:
            return split, whole
        shares = sorted(((sum(b) / len(b) / float(c[0][-1]), i) for i, (b, c) in enumerate(zip(split, curves))
                         if c is not None and i not in whole and c[0][-1] > 0), reverse=True)  # fmt: skip
        if not shares or shares[0][0] < WIDE_SHARE:
            return split, whole
        whole = whole | {shares[0][1]}  # one at a time: the others' budgets grow with each
