"""Native implicit Gaussian-sum sketch: one ``_C.host_gaussian_sketch`` call per problem."""
from __future__ import annotations

from typing import List

import torch

from ... import _native
from ...args import SketchArgs


def gaussian_sketch(args: SketchArgs) -> List[torch.Tensor]:
    """float32 sketches on the CPU; see :class:`pgap_kernels.args.SketchArgs`."""
    lib, _ = _native.load()
    threads = torch.get_num_threads()
    outs = []
    for prob, omega in zip(args.problems, args.omegas):
        rows = prob.n if args.transpose else prob.m
        out = torch.empty(rows, omega.shape[1], dtype=torch.float32)
        lib.host_gaussian_sketch(prob.m, prob.n, prob.offset, prob.key, args.seeds, args.coeffs,
                                 omega.data_ptr(), omega.shape[1], args.transpose, out.data_ptr(),
                                 threads)
        outs.append(out)
    return outs
