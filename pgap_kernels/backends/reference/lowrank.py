"""Reference in-place low-rank update: the definition every other backend is tested against."""
from __future__ import annotations

import torch

from ...args import LowrankArgs
from ..._precision import ieee_float32
from ..._stream import as_float32
from .rounding import store

TILE_ELEMENTS = 1 << 18  # float32 working tile: rows * n stays near this (1 MiB)


def rows_per_tile(n: int) -> int:
    """Rows of an n-column matrix in one working tile of about TILE_ELEMENTS elements."""
    return max(1, TILE_ELEMENTS // max(n, 1))


@torch.no_grad()
@ieee_float32()
def lowrank_update(args: LowrankArgs) -> None:
    """In place, row tile by row tile: W <- decay*W + L @ R.T in float32, one rounding (to
    nearest, or stochastic with ``args.rounding_seed``).

    The float32 temporary is one tile (about 1 MiB), never m x n. A decay that is 0 in float32
    (e.g. 1e-50) overwrites W without reading it.
    """
    decay = torch.tensor(as_float32(args.decay), dtype=torch.float32)
    overwrite = float(decay) == 0.0  # 0 in float32 (e.g. 1e-50): W is not read
    for p, (w, left, right) in enumerate(zip(args.weights, args.lefts, args.rights)):
        rt = right.t()
        n = w.shape[1]
        step = rows_per_tile(n)
        for lo in range(0, w.shape[0], step):
            hi = min(lo + step, w.shape[0])
            tile = torch.mm(left[lo:hi], rt)
            if not overwrite:
                tile += decay * w[lo:hi].float()
            store(w[lo:hi], tile, args.rounding_seed, args.keys[p], args.offsets[p] + lo * n)
