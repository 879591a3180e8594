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
from offload.kernels import chunk_score as cs, decode_common as dc, sparse_decode as sd, token_decode as td
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
                     BLOCK_N=dc.default_block_n(tdt, d), BLOCK_D=d), ("n_kv", "n_splits"), arch)
            if dt == "bf16":  # fp32 scores are always fp32 math
                for low_rank in (False, True):
                    block_c, warps = cs._tiles(d, low_rank)
                    out[f"chunk_score sm_{arch} D{d} low_rank={low_rank}"] = build(
                        cs._chunk_score_kernel, dict(Q=P, LO=P, HI=P, P="*fp32", RES=P, OUT="*fp32"),
                        dict(GROUP=3, LOW_RANK=low_rank, BLOCK_G=16, BLOCK_C=block_c, BLOCK_D=d, BLOCK_R=32),
                        ("n_kv", "n_chunks", "rank"), arch, warps, 3)
    out[f"decode_reduce sm_{arch}"] = build(
        dc.decode_reduce_kernel, dict(MID_O="*fp32", MID_LSE="*fp32", O="*bf16", LSE="*fp32"),
        dict(BLOCK_S=64, BLOCK_D=256), ("n_heads", "n_splits"), arch)
for arch in (89, 90):
    for dt, tdt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for d in (64, 128, 256):
            P = "*" + dt
            out[f"token_decode sm_{arch} {dt} D{d}"] = build(
                td._token_split_kernel,
                dict(Q=P, K=P, V=P, SLOT="*i32", IDS="*i32", LEN="*i32", XK=P, XV=P, XLEN="*i32", O=P,
                     LSE="*fp32", MID_O="*fp32", MID_LSE="*fp32", scale_log2="fp32"),
                dict(GROUP=4, SPLIT=True, HAS_EXTRA=True, DOT_FP32=False, PRECISION=dc.precision(tdt),
                     BLOCK_G=16, BLOCK_N=dc.default_block_n(tdt, d), BLOCK_D=d),
                ("n_kv", "n_splits", "s_slot", "s_it"), arch)
from offload.kernels import sketch_score as ss
nodiv = ("n_kv", "n_tokens", "head_dim", "rank", "tiles_per_split", "n_splits")
types = dict(Q="*bf16", P="*fp32", QL="*fp32", QT="*fp32", LV="*i8", AUX="*fp16", BOUND="*fp32", MID="*fp32",
             MASS="*fp32", half_step="fp32", scaling="fp32")
for arch in (89, 90):
    for d in (64, 128, 256):
        block_r = 1 << (d // 2 - 5).bit_length()  # the token policy's largest rank, D/2 - 4
        block_n, block_k, warps = ss._tiles(block_r)
        tiles = dict(GROUP=3, BLOCK_G=16, BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_K=block_k)
        out[f"sketch_query sm_{arch} D{d}"] = build(
            ss._sketch_query_kernel, types, dict(GROUP=3, BLOCK_G=16, BLOCK_D=d, BLOCK_R=block_r), nodiv,
            arch, 4, ss._STAGES)
        for has_mass in (False, True):
            out[f"sketch_bound sm_{arch} D{d} mass={has_mass}"] = build(
                ss._sketch_bound_kernel, types, dict(HAS_MASS=has_mass, **tiles), nodiv, arch, warps, ss._STAGES)
        out[f"sketch_mass sm_{arch} D{d}"] = build(
            ss._sketch_mass_kernel, types, dict(BLOCK_S=ss._MAX_SPLITS, **tiles), nodiv, arch, warps, ss._STAGES)
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
