"""Compile a Triton kernel for a GPU this machine need not have, and read its resource use.

Used by tests/kernels/test_kernel_compile.py (in a subprocess with TRITON_INTERPRET=0: under the
interpreter @triton.jit builds interpreter objects). triton ships ptxas and cuobjdump, so a cubin for
sm_89 / sm_90 builds without a device. The JIT marks integer arguments divisible by 16 at launch
(strides, D, C): `build` does too, except for the names in `nodiv`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

__all__ = ["build"]


def build(fn, types: dict, consts: dict, nodiv, arch: int, num_warps: int = 4, num_stages: int = 2) -> dict:
    """Compile `fn` (a @triton.jit function) for sm_`arch`. types: argument name -> Triton type
    ("*bf16", "fp32", ...; unnamed: "i32"); consts: constexpr values. Returns {shared: bytes of
    shared memory, stack: bytes of local memory (spills), usage: cuobjdump's line}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n] not in ("constexpr", "fp32") and n not in nodiv}  # fmt: skip
    k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    line = next(l for l in usage.splitlines() if "REG:" in l)  # noqa: E741
    stack = int(line.split("STACK:")[1].split()[0])
    return dict(shared=k.metadata.shared, stack=stack, usage=line.strip())
