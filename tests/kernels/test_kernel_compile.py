"""The compiled path, without a GPU: every kernel must compile to a cubin for sm_89 (the RTX 4090
class this runtime targets) and sm_90, with the launchers' tile choices, and ptxas must report no
register spills and shared memory within the architecture's limit.

The interpreter runs kernels as numpy and checks none of this (tl.dot shape minimums, layouts,
register pressure). Compiling needs no device: triton ships ptxas (`offload/kernels/_compile_check.py`).
It runs in a subprocess because this process has TRITON_INTERPRET=1, under which @triton.jit builds
interpreter objects. A new kernel adds its entries to SCRIPT.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

SCRIPT = r'''
import json
import torch
from offload.kernels import chunk_score as cs, sparse_decode as sd
from offload.kernels._compile_check import build

out = {}
for arch in (89, 90):
    for dt, tdt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        P = "*" + dt
        prec = "ieee" if dt == "fp32" else "tf32"
        for d in (64, 128, 256):
            out[f"sparse_decode sm_{arch} {dt} D{d}"] = build(
                sd._decode_split_kernel,
                dict(Q=P, K=P, V=P, BT="*i32", BODY="*i32", XK=P, XV=P, XLEN="*i32", O=P, LSE="*fp32",
                     MID_O="*fp32", MID_LSE="*fp32", scale_log2="fp32"),
                dict(GROUP=4, SPLIT=True, HAS_EXTRA=True, DOT_FP32=False, PRECISION=prec, BLOCK_G=16,
                     BLOCK_N=sd._block_n(tdt, d), BLOCK_D=d), ("n_kv", "n_splits"), arch)
            if dt == "bf16":  # fp32 scores are always fp32 math
                for low_rank in (False, True):
                    block_c, warps = cs._tiles(d, low_rank)
                    out[f"chunk_score sm_{arch} D{d} low_rank={low_rank}"] = build(
                        cs._chunk_score_kernel, dict(Q=P, LO=P, HI=P, P="*fp32", RES=P, OUT="*fp32"),
                        dict(GROUP=3, LOW_RANK=low_rank, BLOCK_G=16, BLOCK_C=block_c, BLOCK_D=d, BLOCK_R=32),
                        ("n_kv", "n_chunks", "rank"), arch, warps, 3)
    out[f"decode_reduce sm_{arch}"] = build(
        sd._decode_reduce_kernel, dict(MID_O="*fp32", MID_LSE="*fp32", O="*bf16", LSE="*fp32"),
        dict(BLOCK_S=64, BLOCK_D=256), ("n_heads", "n_splits"), arch)
print("RESULT" + json.dumps(out))
'''

SHARED_LIMIT = {"sm_89": 101376, "sm_90": 232448}  # bytes of shared memory per block


@pytest.mark.skipif(not (_BIN / "ptxas").exists() or not (_BIN / "cuobjdump").exists(),
                    reason="this triton wheel ships no ptxas/cuobjdump")
def test_kernels_compile_without_spills():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.split("RESULT", 1)[1])
    problems = [f"{name}: {res['usage']} (shared {res['shared']})" for name, res in results.items()
                if res["stack"] or res["shared"] > SHARED_LIMIT[name.split()[1]]]
    assert not problems, "\n".join(problems)
