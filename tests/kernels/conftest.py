"""Helpers shared by the kernel tests (a fixture, since tests/ is not a package)."""

import pytest
import torch

# atol of the flash-attention error rule, per input dtype: covers output rounding when the
# low-precision reference happens to be exact on a tiny case
_ATOL = {torch.float32: 2e-5, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def _check_error_rule(out, ref32, ref_lp, dtype, what="output"):
    """|out - ref32| <= 2 |ref_lp - ref32| + atol (max norm), ignoring positions where ref32 is inf."""
    out, ref32, ref_lp = out.double(), ref32.double(), ref_lp.double()
    inf = torch.isinf(ref32)
    assert torch.equal(torch.isinf(out), inf), f"{what}: inf pattern differs from the reference"
    keep = ~inf
    err = (out - ref32)[keep].abs().max().item() if keep.any() else 0.0
    base = (ref_lp - ref32)[keep].abs().max().item() if keep.any() else 0.0
    bound = 2 * base + _ATOL[dtype]
    assert err <= bound, f"{what}: max error {err:.3g} > 2 x {base:.3g} + {_ATOL[dtype]:g}"


@pytest.fixture
def error_rule():
    return _check_error_rule
