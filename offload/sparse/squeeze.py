"""Per-layer budgets: uniform, or SqueezeAttention's (arXiv 2404.04793) three groups.

SqueezeAttention measures at prefill how much each layer's attention changes the hidden state —
cos(h, h + attn(h)) averaged over prompt tokens — clusters the layers into 3 groups by that number
and gives the group that changes it least (highest cosine: least important) a smaller share of the
budget; the tokens it saves go evenly to the other layers, so the total is unchanged.
"""

from __future__ import annotations

__all__ = ["kmeans_1d", "layer_budgets", "SQUEEZE_SHARE"]

SQUEEZE_SHARE = 0.5  # budget of a least-important layer relative to the uniform one


def kmeans_1d(values: list[float], k: int = 3) -> list[int]:
    """Optimal 1-D k-means (least squares, by dynamic programming over the sorted values: exact,
    deterministic, O(k n^2) — n is a layer count). Returns a group id per value; groups are numbered
    by ascending centre. Fewer distinct values than k gives fewer groups."""
    n = len(values)
    if n == 0:
        return []
    k = max(1, min(k, len(set(values))))
    order = sorted(range(n), key=lambda i: values[i])
    xs = [values[i] for i in order]
    pre, pre2 = [0.0], [0.0]
    for x in xs:
        pre.append(pre[-1] + x)
        pre2.append(pre2[-1] + x * x)

    def cost(a: int, b: int) -> float:  # squared error of xs[a:b] around its mean
        s = pre[b] - pre[a]
        return pre2[b] - pre2[a] - s * s / (b - a)

    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]  # best[g][e]: xs[:e] in g groups
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for g in range(1, k + 1):
        for e in range(g, n + 1):
            for a in range(g - 1, e):
                c = best[g - 1][a] + cost(a, e)
                if c < best[g][e] - 1e-15:
                    best[g][e], cut[g][e] = c, a
    groups, e = [0] * n, n
    for g in range(k, 0, -1):
        a = cut[g][e]
        for i in range(a, e):
            groups[order[i]] = g - 1
        e = a
    return groups


def layer_budgets(base: int, n_layers: int, split: str = "uniform", attn_cos: list[float] | None = None,
                  share: float = SQUEEZE_SHARE) -> list[int]:  # fmt: skip
    """Budget (tokens, or chunks: any unit) per layer for a uniform per-layer budget `base`.

    uniform, or squeeze without statistics (e.g. a session reopened without prefill): base each.
    squeeze: layers in the highest-cosine group get floor(base * share); what they give up is spread
    over the other layers (remainder to the lowest-cosine ones first), so sum == base * n_layers."""
    if split == "uniform" or attn_cos is None or n_layers < 2:
        return [base] * n_layers
    if split != "squeeze":
        raise ValueError(f"split must be 'uniform' or 'squeeze', got {split!r}")
    groups = kmeans_1d(list(attn_cos), 3)
    top = max(groups)
    low = [i for i, g in enumerate(groups) if g == top]
    rest = [i for i, g in enumerate(groups) if g != top]
    if top == 0 or not rest:  # one group: nothing to squeeze
        return [base] * n_layers
    small = int(base * share)
    out = [base] * n_layers
    for i in low:
        out[i] = small
    spare = (base - small) * len(low)
    each, extra = divmod(spare, len(rest))
    for j, i in enumerate(sorted(rest, key=lambda i: attn_cos[i])):
        out[i] = base + each + (1 if j < extra else 0)
    return out
