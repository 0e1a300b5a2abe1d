"""Tolerances and comparison helpers shared by the tests and the benchmarks.

The stream contract: every backend's xi is within ``XI_TOL * (1 + |xi|)`` of the exact value.
A perturbed tensor may differ between backends by the xi error times the coefficients, plus one
rounding of the result to its dtype (a round-to-nearest-even tie can flip one ulp).
"""
from __future__ import annotations

from typing import Sequence

import torch

XI_TOL = 1e-5

# Relative size of one ulp (2^-mantissa_bits) and the smallest positive subnormal, per dtype.
ULP = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
TINY = {torch.float32: 2.0 ** -149, torch.bfloat16: 2.0 ** -133, torch.float16: 2.0 ** -24}


def assert_xi_close(actual: torch.Tensor, exact: torch.Tensor) -> None:
    """|actual - exact| <= XI_TOL * (1 + |exact|) elementwise (float32 vs exact values)."""
    a = actual.detach().double().cpu()
    e = exact.detach().double().cpu()
    err = (a - e).abs()
    bound = XI_TOL * (1.0 + e.abs())
    bad = err > bound
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{int(bad.sum())} of {a.numel()} values outside 1e-5*(1+|xi|); "
                             f"first at {i}: got {a.view(-1)[i].item()!r}, exact {e.view(-1)[i].item()!r}")


def perturb_tolerance(dtype: torch.dtype, coeffs: Sequence[float]) -> dict:
    """``rtol``/``atol`` for comparing two backends' results of one perturb_ call."""
    scale = sum(abs(c) for c in coeffs)
    return {"rtol": 2 * ULP[dtype], "atol": 2 * XI_TOL * (1.0 + 6.0) * scale + 2 * TINY[dtype]}


def assert_perturb_close(actual: torch.Tensor, expected: torch.Tensor,
                         coeffs: Sequence[float]) -> None:
    """Two backends' outputs agree within :func:`perturb_tolerance` for their dtype."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.detach().float().cpu(), expected.detach().float().cpu(),
                               **perturb_tolerance(actual.dtype, coeffs))
