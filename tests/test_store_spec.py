"""`StoreSpec.derive` (offload/store_spec.py): the one place a config becomes a store's facts — the
kind (tiered when sparse), the chunk (kv_chunk, else the policy's, else 64), the GPU slots per layer
(hot_set_bytes, capped by ctx, at least one), the host pool, the summary bytes."""

import pytest
import torch

from offload import ConfigError, OffloadConfig
from offload.sparse import SparseConfig, policy_names
from offload.sparse.policies.token import Token
from offload.store_spec import DENSE_CHUNK, StoreSpec

L, HKV, D = 4, 2, 16


def _spec(cfg, dtype=torch.float32):
    return StoreSpec.derive(cfg, L, HKV, D, dtype, "cpu")


def test_chunk_defaults_to_the_selection_granularity():
    assert StoreSpec.chunk_of(OffloadConfig()) == DENSE_CHUNK == 64
    assert StoreSpec.chunk_of(OffloadConfig(sparse=SparseConfig(budget=256))) == Token.chunk == 8  # token
    assert StoreSpec.chunk_of(OffloadConfig(sparse=SparseConfig(budget=256, policy=Token(unit="chunk")))) == 8
    assert StoreSpec.chunk_of(OffloadConfig(sparse=SparseConfig(budget=256, policy="token2"))) == 8
    for name in policy_names()[2:]:  # per-chunk summaries or scores
        assert StoreSpec.chunk_of(OffloadConfig(sparse=SparseConfig(budget=256, policy=name))) == 16
    assert StoreSpec.chunk_of(OffloadConfig(sparse=SparseConfig(budget=256), kv_chunk=32)) == 32
    assert StoreSpec.chunk_of(OffloadConfig(kv_chunk=8)) == 8
    assert _spec(OffloadConfig(sparse=SparseConfig(budget=256, policy="quest"))).layout.chunk == 16
    with pytest.raises(ConfigError, match="kv_chunk"):
        OffloadConfig(kv_chunk=0)


def test_kind_is_tiered_when_sparse():
    assert _spec(OffloadConfig()).kind == "dense"
    assert _spec(OffloadConfig(kv_store="tiered")).kind == "tiered"
    c = OffloadConfig(sparse=SparseConfig(budget=0.125, policy="quest", split="squeeze"))
    spec = _spec(c)
    assert spec.kind == "tiered" and c.kv_store == "dense" and spec.sparse is c.sparse
    assert spec.obs_window > 0 and _spec(OffloadConfig()).obs_window == 0
    assert type(spec.new_store()).__name__ == "TieredKVStore"
    assert type(_spec(OffloadConfig()).new_store()).__name__ == "DenseKVStore"


def test_selects_tokens_and_unit():
    assert _spec(OffloadConfig(sparse=SparseConfig(budget=8))).selects_tokens
    assert _spec(OffloadConfig(sparse=SparseConfig(budget=8))).unit == 1
    spec = _spec(OffloadConfig(sparse=SparseConfig(budget=8, policy="bound")))
    assert not spec.selects_tokens and spec.unit == 16
    assert not _spec(OffloadConfig()).selects_tokens


def test_slots_follow_hot_set_bytes_capped_by_ctx():
    cfg = OffloadConfig(kv_store="tiered", kv_chunk=8, sinks=4, window=8)
    chunk_bytes = 2 * HKV * 8 * D * 4  # fp32
    spec = _spec(cfg.replace(hot_set_bytes=5 * L * chunk_bytes))
    assert spec.layout.chunk_bytes == chunk_bytes and spec.gpu_slots == (5,) * L
    assert _spec(cfg.replace(hot_set_bytes=5 * L * chunk_bytes + chunk_bytes)).gpu_slots == (5,) * L  # floor
    assert _spec(cfg.replace(hot_set_bytes=1)).gpu_slots == (1,) * L  # at least one
    capped = _spec(cfg.replace(hot_set_bytes=1000 * L * chunk_bytes, ctx=4 + 8 + 3 * 8))
    assert capped.gpu_slots == (3,) * L  # what ctx tokens need
    assert _spec(cfg.replace(hot_set_bytes=1 << 40)).gpu_slots[0] > 1000  # no ctx: uncapped
    planned = StoreSpec.derive(cfg, L, HKV, D, torch.float32, "cpu", planned_hot_set=7 * L * chunk_bytes)
    assert planned.gpu_slots == (7,) * L  # the memory plan's hot set when the config sets none
    assert _spec(cfg.replace(host_mem=3 * chunk_bytes)).host_chunks == 3
    # gpu_mem is the memory plan's figure, not the hot set: it does not set the slots here
    assert _spec(cfg.replace(gpu_mem=L * chunk_bytes)).gpu_slots == _spec(cfg).gpu_slots


def test_summary_bytes():
    spec = _spec(OffloadConfig(sparse=SparseConfig(budget=8, policy="quest", rest=None)))
    assert spec.summary_bytes(1000) == int(2 * D * 4 / 16 * HKV * L * 1000)
    # the rest (k4v2, scales per 32 channels or the head, fp32 beside fp32 KV): levels + scale and min
    rest = _spec(OffloadConfig(sparse=SparseConfig(budget=8, policy="quest", rest="k4v2")))
    per = D * 6 / 8 + 2 * 2 * (D // min(32, D)) * 4
    assert rest.summary_bytes(1000) - spec.summary_bytes(1000) == int(per * HKV * L * 1000)
    assert _spec(OffloadConfig()).summary_bytes(1000) == 0
