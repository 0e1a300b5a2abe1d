"""Native fused perturbation: one ``_C.host_perturb`` call per dtype group (written dtype,
source dtype), a minus output in the same pass."""
from __future__ import annotations

import torch

from ... import _native
from ..._stream import DISTRIBUTION_CODES
from ...args import PerturbArgs
from .._groups import split_by_dtype


def perturb_group(args: PerturbArgs) -> None:
    """On CPU tensors, in place or from ``args.sources``; see :class:`PerturbArgs`."""
    lib, _ = _native.load()
    for code, src_code, group in split_by_dtype(args):
        lib.host_perturb(
            code,
            [t.data_ptr() for t in group.tensors],
            [group.source(p).data_ptr() for p in range(len(group.tensors))],
            [m.data_ptr() for m in group.means] if group.means is not None else [0] * len(group.tensors),
            [t.numel() for t in group.tensors],
            group.offsets,
            group.keys,
            group.seeds,
            group.coeffs,
            group.decay,
            group.mean_coeff,
            group.rounding_seed is not None,
            group.rounding_seed or 0,
            DISTRIBUTION_CODES[group.distribution],
            torch.get_num_threads(),
            [t.data_ptr() for t in group.minus] if group.minus is not None else [],
            src_code,
        )
