"""Native subspace perturbation: one ``_C.host_subspace_perturb`` call for all matrices."""
from __future__ import annotations

import torch

from ... import _native
from ...args import SubspaceArgs
from .._groups import DTYPE_CODES


def subspace_update(args: SubspaceArgs) -> None:
    """In place on CPU matrices (any mix of dtypes); see :class:`SubspaceArgs`."""
    lib, _ = _native.load()
    lib.host_subspace_perturb(
        [DTYPE_CODES[t.dtype] for t in args.tensors], [t.data_ptr() for t in args.tensors],
        [v.data_ptr() for v in args.bases], [t.shape[0] for t in args.tensors],
        [t.shape[1] for t in args.tensors], [v.shape[1] for v in args.bases], args.offsets,
        args.keys, [args.rounding_index(p) for p in range(len(args.tensors))], args.seeds,
        args.coeffs, args.decay, args.rounding_seed is not None, args.rounding_seed or 0,
        torch.get_num_threads())
