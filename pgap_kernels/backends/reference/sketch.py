"""Reference implicit Gaussian-sum sketch: A @ omega or A.T @ omega, A drawn tile by tile."""
from __future__ import annotations

from typing import List

import torch

from ...args import SketchArgs, SketchProblem
from ..._precision import ieee_float32
from .lowrank import rows_per_tile
from .philox import normals


def gaussian_rows(problem: SketchProblem, seeds: List[int], coeffs: List[float], lo: int, hi: int,
                  device: torch.device) -> torch.Tensor:
    """float32 rows [lo, hi) of A = sum_j coeffs[j] * Xi_j (a (hi - lo, n) tensor).

    Rows of A are consecutive in the stream: row a starts at offset + a*n.
    """
    count = (hi - lo) * problem.n
    start = problem.offset + lo * problem.n
    acc = torch.zeros(count, dtype=torch.float32, device=device)
    for seed, coeff in zip(seeds, coeffs):
        acc += torch.tensor(coeff, dtype=torch.float32) * normals(seed, problem.key, start, count, device)
    return acc.view(hi - lo, problem.n)


@torch.no_grad()
@ieee_float32()
def gaussian_sketch(args: SketchArgs) -> List[torch.Tensor]:
    """float32 A_p @ omega_p, or A_p.T @ omega_p when ``args.transpose``, for every problem p.

    Memory: one tile of A (about 1 MiB of float32, plus the stream's int64 temporaries) and the
    (m + n) x q operands; never m x n.
    """
    outs = []
    for prob, omega in zip(args.problems, args.omegas):
        rows = prob.n if args.transpose else prob.m
        out = torch.zeros(rows, omega.shape[1], dtype=torch.float32, device=omega.device)
        step = rows_per_tile(prob.n)
        for lo in range(0, prob.m, step):
            hi = min(lo + step, prob.m)
            tile = gaussian_rows(prob, args.seeds, args.coeffs, lo, hi, omega.device)
            if args.transpose:
                out.addmm_(tile.t(), omega[lo:hi])
            else:
                out[lo:hi] = torch.mm(tile, omega)
        outs.append(out)
    return outs
