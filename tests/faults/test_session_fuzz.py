"""2,000 seeded hypothesis cases of damaged sessions (bytes flipped, cut, appended, files deleted or
swapped for links, header fields edited under a fresh valid CRC): every load is a SessionError or the
exact KV that was saved. bench/faults.py runs the same fuzzer for 20,000+ cases."""

import collections

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings

from session_fuzz import check, damage, make_original

COUNTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return root, {d: make_original(root, d) for d in (torch.float32, torch.bfloat16)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-raw", "bf16-zstd"])
def test_damaged_sessions_load_identically_or_raise_session_error(originals, dtype):
    root, made = originals
    path, kv = made[dtype]

    @seed(27)
    @settings(max_examples=1000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(ops=damage)
    def case(ops):
        COUNTS[check(path, kv, root / "work.session", ops)] += 1

    before = sum(COUNTS.values())
    case()
    assert sum(COUNTS.values()) - before == 1000  # every case ran to an outcome
    assert COUNTS["session-error"] > 0
