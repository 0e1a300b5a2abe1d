"""Public low-rank ops: in-place U·Z·Vᵀ perturbation and implicit Gaussian-sum sketches.

Validation runs here, before anything is modified; the backend chosen for the device then runs
(see :mod:`pgap_kernels._dispatch`). Neither op ever allocates an m x n temporary.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch

from ._dispatch import run_backend
from ._lowrank_validation import (LowrankArgs, SketchProblem, lowrank_factors, validate_lowrank,
                                  validate_sketch)
from ._validation import FloatOrFloats, IntOrInts

MatrixOrMatrices = Union[torch.Tensor, Sequence[torch.Tensor]]
ProblemLike = Union[SketchProblem, Tuple[int, int], Tuple[int, int, int], Tuple[int, int, int, int]]


@torch.no_grad()
def lowrank_perturb_(W: MatrixOrMatrices, U: MatrixOrMatrices, Z: MatrixOrMatrices,
                     V: MatrixOrMatrices, scale: FloatOrFloats, *, decay: float = 1.0) -> None:
    """In place: ``W <- decay*W + scale * U @ Z @ V.T`` for one matrix or a list of them.

    Parameters
    ----------
    W : Tensor (m, n) or sequence of them
        Contiguous float32/bfloat16/float16 weights on one device. **Mutated.**
    U, Z, V : Tensor or sequence of them (one per W)
        U (m, r), Z (r, s), V (n, s), r, s >= 1, any float dtype, same device as W (read only;
        need not be contiguous).
    scale : float or sequence of float (one per W)
    decay : float
        Multiplies the old W; ``decay == 0`` overwrites W without reading it.

    Accumulation is float32 with one rounding to W's dtype. ``scale * U @ Z`` (or ``V @ Z.T``,
    whichever inner size min(r, s) is smaller) is formed first in float32, an O((m + n) min(r, s))
    temporary; the m x n product is never materialized: the backends apply it tile by tile
    (native: blocked OpenMP loop; cuda/triton: a tiled GEMM whose epilogue updates W in place).

    Raises
    ------
    TypeError, ValueError
        On a bad argument (shape mismatch, dtype, device, non-contiguous W, a matrix listed
        twice), before any tensor is modified.
    """
    Ws, Us, Zs, Vs, scales, decay = validate_lowrank(W, U, Z, V, scale, decay)
    keep = [p for p, w in enumerate(Ws) if w.numel() > 0]
    if not keep:
        return
    lefts, rights = [], []
    for p in keep:
        left, right = lowrank_factors(Us[p], Zs[p], Vs[p], scales[p])
        lefts.append(left)
        rights.append(right)
    weights = [Ws[p] for p in keep]
    run_backend("lowrank", "lowrank_update", weights[0].device,
                LowrankArgs(weights, lefts, rights, decay))
    torch.autograd.graph.increment_version(weights)


def gaussian_sketch_batch(problems: Sequence[ProblemLike], seeds: IntOrInts, coeffs: FloatOrFloats,
                          omegas: Sequence[torch.Tensor], *, transpose: bool = False
                          ) -> List[torch.Tensor]:
    """:func:`gaussian_sketch` for many problems sharing seeds and coefficients.

    Parameters
    ----------
    problems : sequence of (m, n[, key[, offset]]) or :class:`SketchProblem`
    seeds, coeffs : as for :func:`gaussian_sketch`
    omegas : sequence of Tensor, one per problem, all on one device
        (n_p, q_p), or (m_p, q_p) when ``transpose``.

    Returns
    -------
    list of float32 Tensor, (m_p, q_p) or (n_p, q_p), on the omegas' device.
    """
    args = validate_sketch(problems, seeds, coeffs, omegas, transpose)
    if not args.problems:
        return []
    with torch.no_grad():
        return run_backend("sketch", "gaussian_sketch", args.omegas[0].device, args)


def gaussian_sketch(m: int, n: int, seeds: IntOrInts, coeffs: FloatOrFloats, omega: torch.Tensor, *,
                    key: int = 0, offset: int = 0, transpose: bool = False) -> torch.Tensor:
    """``A @ omega`` (or ``A.T @ omega``) for the implicit m x n Gaussian sum A.

    ``A[a, b] = sum_j coeffs[j] * xi(seeds[j], key, offset + a*n + b)``: exactly the matrix that
    ``perturb_(W, seeds, coeffs, keys=[key], offsets=[offset], decay=0)`` writes into a
    contiguous m x n tensor W. Its tiles are generated inside the kernel: memory is
    O((m + n) q), never m x n.

    Parameters
    ----------
    m, n : int >= 0
    seeds : int or sequence of int in [0, 2**64)
    coeffs : float or sequence of float, one per seed
    omega : Tensor (n, q), or (m, q) when ``transpose``; float32/bfloat16/float16, any device
        (read as float32).
    key : int in [0, 2**32)
    offset : int >= 0, with offset + m*n < 2**63
    transpose : bool

    Returns
    -------
    float32 Tensor (m, q), or (n, q) when ``transpose``, on omega's device.
    """
    return gaussian_sketch_batch([(m, n, key, offset)], seeds, coeffs, [omega], transpose=transpose)[0]
