"""``GaussianSum``: the implicit m x n matrix sum_j c_j Xi_j, applied through sketches only."""
from __future__ import annotations

from typing import List, Tuple

import torch

from ._checks import (DeviceLike, FloatOrFloats, IntOrInts, as_device, check_finite,
                      check_float_dtype, check_problem, check_seeds_coeffs)
from .args import SketchProblem
from .perturb import perturb_
from .sketch import gaussian_sketch, gaussian_sketch_batch


class GaussianSum:
    """The implicit matrix ``A = sum_j coeffs[j] * Xi_j`` (m x n), never stored.

    ``Xi_j[a, b] = xi(seeds[j], key, offset + a*n + b)``: the matrix that
    ``perturb_(W, seeds, coeffs, keys=[key], offsets=[offset], decay=0)`` writes into a
    contiguous m x n tensor. Products with dense matrices run :func:`gaussian_sketch` (memory
    O((m + n) q)); ``.T`` is a transposed view; ``materialize()`` builds the dense matrix
    (for tests and small problems).

    Parameters
    ----------
    m, n : int >= 0
    seeds : int or sequence of int in [0, 2**64)
    coeffs : float or sequence of float, one per seed (numbers as for :func:`perturb_`)
    key : int in [0, 2**32)
    offset : int >= 0 with offset + m*n < 2**63
    device : torch.device, str or int, optional
        Where :meth:`materialize` and :func:`randomized_svd` place their results (default CPU);
        a product ``A @ X`` runs on X's device.

    Examples
    --------
    P-GAP's probe matrix S = (1/h) sum_j rho_j Xi_j is ``GaussianSum(m, n, seeds, [r / h for r in rhos], key=k)``.
    """

    __slots__ = ("problem", "seeds", "coeffs", "device", "transposed")

    def __init__(self, m: int, n: int, seeds: IntOrInts, coeffs: FloatOrFloats, *, key: int = 0,
                 offset: int = 0, device: DeviceLike = None) -> None:
        self.problem: SketchProblem = check_problem((m, n, key, offset), "GaussianSum")
        self.seeds, self.coeffs = check_seeds_coeffs(seeds, coeffs)
        self.device = as_device(device)
        self.transposed = False

    # -- shape -----------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        m, n = self.problem.m, self.problem.n
        return torch.Size((n, m) if self.transposed else (m, n))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def T(self) -> "GaussianSum":  # noqa: N802 - mirrors torch.Tensor.T
        return self.transpose()

    def transpose(self) -> "GaussianSum":
        """The transposed operator (shares seeds, coefficients, key and offset)."""
        out = self._copy()
        out.transposed = not self.transposed
        return out

    def _copy(self) -> "GaussianSum":
        out = GaussianSum.__new__(GaussianSum)
        out.problem, out.seeds, out.coeffs = self.problem, list(self.seeds), list(self.coeffs)
        out.device, out.transposed = self.device, self.transposed
        return out

    # -- arithmetic ------------------------------------------------------------------------
    def __mul__(self, factor: float) -> "GaussianSum":
        """``factor * A``: the coefficients scaled (still implicit)."""
        factor = check_finite(factor, "factor")
        out = self._copy()
        out.coeffs = [c * factor for c in self.coeffs]
        return out

    __rmul__ = __mul__

    def __neg__(self) -> "GaussianSum":
        return self * -1.0

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        """``A @ X`` for a dense X of shape (cols,) or (cols, q): float32 on X's device."""
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        vector = other.dim() == 1
        x = other.unsqueeze(1) if vector else other
        p = self.problem
        out = gaussian_sketch(p.m, p.n, self.seeds, self.coeffs, x, key=p.key, offset=p.offset,
                              transpose=self.transposed)
        return out.squeeze(1) if vector else out

    def __rmatmul__(self, other: torch.Tensor) -> torch.Tensor:
        """``X @ A`` = (A.T @ X.T).T for a dense X of shape (rows,) or (q, rows)."""
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        if other.dim() == 1:
            return self.transpose() @ other
        return (self.transpose() @ other.t()).t()

    # -- dense form --------------------------------------------------------------------------
    def materialize(self, dtype: torch.dtype = torch.float32, device: DeviceLike = None) -> torch.Tensor:
        """The dense matrix (m x n, or n x m when transposed) via ``perturb_`` (one rounding)."""
        check_float_dtype(dtype, "dtype")
        p = self.problem
        out = torch.empty(p.m, p.n, dtype=dtype,
                          device=self.device if device is None else as_device(device))
        perturb_(out, self.seeds, self.coeffs, keys=[p.key], offsets=[p.offset], decay=0.0)
        return out.t() if self.transposed else out

    def __repr__(self) -> str:
        p = self.problem
        t = ".T" if self.transposed else ""
        return (f"GaussianSum(m={p.m}, n={p.n}, seeds={self.seeds}, coeffs={self.coeffs}, "
                f"key={p.key}, offset={p.offset}){t}")


def sketch_many(operators: List[GaussianSum], omegas: List[torch.Tensor]) -> List[torch.Tensor]:
    """``A_p @ omegas[p]`` for operators that share seeds, coefficients and orientation,
    in one batched :func:`gaussian_sketch_batch` call."""
    first = operators[0]
    problems = [op.problem for op in operators]
    return gaussian_sketch_batch(problems, first.seeds, first.coeffs, omegas,
                                 transpose=first.transposed)


def batch_key(op: GaussianSum) -> Tuple:
    """Operators with equal keys can share one batched sketch call."""
    return (tuple(op.seeds), tuple(op.coeffs), op.transposed, op.problem.m, op.problem.n)
