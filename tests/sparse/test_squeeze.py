"""SqueezeAttention's split (offload/sparse/squeeze.py): layers clustered by cos(h, h + attn(h)); the
cluster that changes h least gets less budget; the total is kept."""

from offload.sparse.squeeze import kmeans_1d, layer_budgets


def test_kmeans_1d_and_squeeze_budgets():
    vals = [0.1, 0.12, 0.5, 0.52, 0.9, 0.91, 0.95]
    assert kmeans_1d(vals) == [0, 0, 1, 1, 2, 2, 2]
    assert kmeans_1d([0.3] * 4) == [0] * 4
    assert layer_budgets(100, 7, "uniform", vals) == [100] * 7
    b = layer_budgets(100, 7, "squeeze", vals)
    assert sum(b) == 700 and b[4:] == [50, 50, 50] and min(b[:4]) > 100
    assert layer_budgets(100, 7, "squeeze", None) == [100] * 7  # no statistics: uniform
