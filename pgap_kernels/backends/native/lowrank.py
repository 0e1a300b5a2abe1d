"""Native in-place low-rank update: one ``_C.host_lowrank_update`` call per matrix."""
from __future__ import annotations

import torch

from ... import _native
from ...args import LowrankArgs
from .._groups import DTYPE_CODES


def lowrank_update(args: LowrankArgs) -> None:
    """In place on CPU matrices; see :class:`pgap_kernels.args.LowrankArgs`."""
    lib, _ = _native.load()
    threads = torch.get_num_threads()
    stochastic = args.rounding_seed is not None
    for w, left, right, key, offset in zip(args.weights, args.lefts, args.rights, args.keys,
                                           args.offsets):
        lib.host_lowrank_update(DTYPE_CODES[w.dtype], w.data_ptr(), w.shape[0], w.shape[1],
                                left.data_ptr(), right.data_ptr(), left.shape[1], args.decay,
                                stochastic, args.rounding_seed or 0, key, offset, threads)
