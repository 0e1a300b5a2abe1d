"""Front end of the Gaussian-sum sketch op: ``gaussian_sketch`` and ``gaussian_sketch_batch``.

``A @ omega`` (or ``A.T @ omega``) for implicit seeded Gaussian sums A, never stored m x n.
Validation runs here, before anything is computed, into a :class:`~pgap_kernels.args.SketchArgs`;
the backend chosen for the device then runs its ``backends/<name>/sketch.py``
``gaussian_sketch`` (see :mod:`pgap_kernels._dispatch`). ``pgap::gaussian_sketch_batch`` is a
``torch.library`` custom op, so torch.compile traces it without a graph break; plain eager calls
skip the op's dispatch.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch

from ._checks import (FloatOrFloats, IntOrInts, as_list, check_matrix, check_problem,
                      check_seeds_coeffs, matrix_list)
from ._dispatch import run_backend
from ._library import define_op, plain_eager_call
from ._stream import seed_from_int64, seed_to_int64
from .args import SketchArgs, SketchProblem
from .backends import SKETCH

ProblemLike = Union[SketchProblem, Tuple[int, int], Tuple[int, int, int], Tuple[int, int, int, int]]


def validate_sketch(problems, seeds: IntOrInts, coeffs: FloatOrFloats, omegas,
                    transpose: bool) -> SketchArgs:
    """Check the arguments of the sketch ops; omegas become contiguous float32 copies if needed."""
    problems = [check_problem(p, f"problems[{i}]") for i, p in enumerate(as_list(problems, "problems"))]
    seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
    omegas = matrix_list(omegas, "omegas")
    if len(omegas) != len(problems):
        raise ValueError(f"omegas has {len(omegas)} matrices but problems has {len(problems)}")
    if not isinstance(transpose, bool):
        raise TypeError(f"transpose must be a bool, got {type(transpose).__name__}")
    device = omegas[0].device if omegas else None
    out = []
    for i, (prob, om) in enumerate(zip(problems, omegas)):
        check_matrix(om, f"omega[{i}]" if len(omegas) > 1 else "omega", device)
        rows = prob.m if transpose else prob.n
        if om.shape[0] != rows:
            what = "m (transpose=True)" if transpose else "n"
            raise ValueError(f"omega{'' if len(omegas) == 1 else f'[{i}]'} has {om.shape[0]} rows; "
                             f"expected {what} = {rows} for a {prob.m} x {prob.n} sum")
        out.append(om.float().contiguous())
    return SketchArgs(problems, seeds_l, coeffs_l, out, transpose)


def _sketch_impl(ms: List[int], ns: List[int], keys: List[int], offsets: List[int],
                 seeds: List[int], coeffs: List[float], omegas: List[torch.Tensor], transpose: bool,
                 backend: str) -> List[torch.Tensor]:
    """Body of ``pgap::gaussian_sketch_batch`` on CPU and CUDA (seeds as int64 bit patterns,
    omegas contiguous float32 on one device, at least one problem)."""
    problems = [SketchProblem(*p) for p in zip(ms, ns, keys, offsets)]
    args = SketchArgs(problems, [seed_from_int64(s) for s in seeds], list(coeffs), list(omegas),
                      transpose)
    return run_backend(SKETCH, omegas[0].device, args, backend=backend)


def _sketch_fake(ms, ns, keys, offsets, seeds, coeffs, omegas, transpose, backend) -> List[torch.Tensor]:
    return [om.new_empty((n if transpose else m, om.shape[1]), dtype=torch.float32)
            for m, n, om in zip(ms, ns, omegas)]


define_op("gaussian_sketch_batch", _sketch_impl, _sketch_fake)


@torch.no_grad()
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
    columns = [list(c) for c in zip(*args.problems)]  # ms, ns, keys, offsets
    if plain_eager_call(args.omegas):
        return _sketch_impl(*columns, args.seeds, args.coeffs, args.omegas, transpose, "")
    return torch.ops.pgap.gaussian_sketch_batch(*columns, [seed_to_int64(s) for s in args.seeds],
                                                args.coeffs, args.omegas, transpose, "")


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
    coeffs : float or sequence of float, one per seed (numbers as for :func:`perturb_`)
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
