"""CUDA subspace perturbation: one launch per dtype group over a multi-matrix tile table."""
from __future__ import annotations

import torch

from ... import _native
from ...args import SubspaceArgs
from .._batches import group_indices
from .._groups import DTYPE_CODES
from .._device_tables import on_device
from .._tables import stream_tables, subspace_span, subspace_table
from .lowrank import _device_index

TILES_PER_SM = 8  # enough CTAs to keep every SM busy (2 resident per SM), few enough to draw Xi rarely


def subspace_update(args: SubspaceArgs) -> None:
    """In place on CUDA matrices of one device; see :class:`SubspaceArgs`.

    The launch tables come from :func:`on_device` (no host wait).
    """
    lib, _ = _native.load()
    device = args.tensors[0].device
    stream = torch.cuda.current_stream(device).cuda_stream
    seeds, coeffs = stream_tables(args, device)
    rows, cols = lib.CUDA_SUBSPACE_TILE
    target = TILES_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    for dtype, ps in group_indices(range(len(args.tensors)), lambda p: args.tensors[p].dtype).items():
        group = args.subset(ps)
        span = subspace_span(group, rows, cols, target)
        table, total = subspace_table(group, rows, cols, span)
        meta = on_device(table, torch.int64, device)
        lib.cuda_subspace_perturb(DTYPE_CODES[dtype], meta.data_ptr(), len(ps), total, span,
                                  seeds.data_ptr(), coeffs.data_ptr(), len(args.seeds), args.decay,
                                  args.rounding_seed is not None, args.rounding_seed or 0,
                                  _device_index(device), stream)
