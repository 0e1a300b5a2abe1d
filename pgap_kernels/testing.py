"""Tolerances and comparison helpers shared by the tests, the benchmarks and the self-check.

The stream contract: every backend's xi is within ``XI_TOL * (1 + |xi|)`` of the exact value.
A perturbed tensor may differ between backends by the xi error times the coefficients, plus one
rounding of the result to its dtype (a round-to-nearest-even tie can flip one ulp).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

XI_TOL = 1e-5

# Relative size of one ulp (2^-mantissa_bits) and the smallest positive subnormal, per dtype.
ULP = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
TINY = {torch.float32: 2.0 ** -149, torch.bfloat16: 2.0 ** -133, torch.float16: 2.0 ** -24}


def assert_within(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float = 0.0,
                  atol: Union[float, torch.Tensor] = 0.0, equal_nan: bool = False,
                  what: str = "values") -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` elementwise, in float64 on the CPU.

    Equal values (infinities included) always pass; NaN passes against NaN only with
    ``equal_nan``. ``atol`` may be a tensor that broadcasts against the values (per column, say).
    On failure: AssertionError with the count and the first offending element.

    Deliberately lean: ``torch.testing.assert_close`` imports torch.distributed.tensor and sympy
    on its first call (about 55 MB and 0.6 s), a cost the first-use self-check must not add to
    a user's first op call.
    """
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: got {tuple(a.shape)}, expected {tuple(e.shape)}")
    bound = (atol.double().cpu() if isinstance(atol, torch.Tensor) else atol) + rtol * e.abs()
    ok = (a == e) | ((a - e).abs() <= bound)
    if equal_nan:
        ok |= a.isnan() & e.isnan()
    if bool(ok.all()):
        return
    bad = (~ok).reshape(-1)
    i = int(bad.nonzero()[0])
    limit = torch.broadcast_to(torch.as_tensor(bound, dtype=torch.float64), a.shape).reshape(-1)[i]
    index = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), a.shape)) if a.dim() else ()
    raise AssertionError(f"{int(bad.sum())} of {a.numel()} {what} out of tolerance; first at "
                         f"{index}: got {a.reshape(-1)[i].item()!r}, expected "
                         f"{e.reshape(-1)[i].item()!r}, allowed difference {float(limit):.3g}")


def assert_xi_close(actual: torch.Tensor, exact: torch.Tensor) -> None:
    """|actual - exact| <= XI_TOL * (1 + |exact|) elementwise (float32 vs exact values)."""
    assert_within(actual, exact, rtol=XI_TOL, atol=XI_TOL, what="stream values (1e-5*(1+|xi|))")


def perturb_tolerance(dtype: torch.dtype, coeffs: Sequence[float]) -> dict:
    """``rtol``/``atol`` for comparing two backends' results of one perturb_ call."""
    scale = sum(abs(c) for c in coeffs)
    return {"rtol": 2 * ULP[dtype], "atol": 2 * XI_TOL * (1.0 + 6.0) * scale + 2 * TINY[dtype]}


def assert_perturb_close(actual: torch.Tensor, expected: torch.Tensor,
                         coeffs: Sequence[float]) -> None:
    """Two backends' outputs agree within :func:`perturb_tolerance` for their dtype."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert_within(actual, expected, **perturb_tolerance(actual.dtype, coeffs))


def assert_lowrank_close(actual: torch.Tensor, expected: torch.Tensor, magnitude: float) -> None:
    """Two backends' results of one ``lowrank_perturb_`` call agree.

    The float32 accumulations may differ by summation order (bounded by 1e-5 of ``magnitude``,
    the largest entry of |scale*U@Z| @ |V|^T), then the one rounding to the dtype may differ by
    an ulp of the result.
    """
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert_within(actual, expected, rtol=2 * ULP[actual.dtype],
                  atol=1e-5 * magnitude + 2 * TINY[actual.dtype], equal_nan=True)


def sketch_atol(coeffs: Sequence[float], omega: torch.Tensor) -> torch.Tensor:
    """Per-column absolute tolerance (shape (q,)) of a Gaussian-sum sketch ``A @ omega``.

    Each xi is within XI_TOL*(1+|xi|) (|xi| < 6 in practice) of the exact stream value and the
    float32 sums over the inner dimension may be ordered differently, so the error of column c
    is a small multiple of sum_j |coeffs[j]| * ||omega[:, c]||_1.
    """
    scale = sum(abs(c) for c in coeffs)
    return 1e-4 * scale * omega.detach().abs().double().sum(0).cpu() + 1e-6


def assert_sketch_close(actual: torch.Tensor, expected: torch.Tensor, coeffs: Sequence[float],
                        omega: torch.Tensor) -> None:
    """Two sketches of the same implicit Gaussian sum agree within :func:`sketch_atol`."""
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    assert_within(actual, expected, atol=sketch_atol(coeffs, omega), what="sketch entries")
