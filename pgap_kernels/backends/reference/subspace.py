"""Reference subspace perturbation: the definition every other backend is tested against."""
from __future__ import annotations

import torch

from ...args import LowrankArgs, SketchProblem, SubspaceArgs
from .lowrank import lowrank_update, rows_per_tile
from .sketch import gaussian_rows


def xi_sum(args: SubspaceArgs, p: int) -> torch.Tensor:
    """float32 ``sum_j coeffs[j] * Xi_j`` (m x r) of matrix p, drawn about 1 MiB of rows at a time.

    Row i of Xi is stream indices ``offsets[p] + i*r .. + r - 1``: the Gaussian-sum matrix of a
    sketch problem (m, r, key, offset).
    """
    (m, _), r = args.tensors[p].shape, args.bases[p].shape[1]
    problem = SketchProblem(m, r, args.keys[p], args.offsets[p])
    out = torch.empty(m, r, dtype=torch.float32, device=args.tensors[p].device)
    step = rows_per_tile(r)
    for lo in range(0, m, step):
        hi = min(lo + step, m)
        out[lo:hi] = gaussian_rows(problem, args.seeds, args.coeffs, lo, hi, out.device)
    return out


@torch.no_grad()
def subspace_update(args: SubspaceArgs) -> None:
    """In place: W_p <- decay*W_p + Xi_sum_p @ V_p.T in float32 with one rounding.

    Xi_sum_p (m x r float32) is formed first, then applied by the reference low-rank update, row
    tile by row tile (about 1 MiB of float32 at a time): never an m x n temporary.
    """
    for p, (w, v) in enumerate(zip(args.tensors, args.bases)):
        lowrank_update(LowrankArgs([w], [xi_sum(args, p)], [v], args.decay, [args.keys[p]],
                                   [args.rounding_index(p)], args.rounding_seed))
