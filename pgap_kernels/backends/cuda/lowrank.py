"""CUDA in-place low-rank update: one batched launch per (dtype, m, n, k) group, torch's stream."""
from __future__ import annotations

import torch

from ... import _native
from ...args import LowrankArgs
from .._batches import group_indices
from .._device_tables import on_device
from .._groups import DTYPE_CODES


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def lowrank_update(args: LowrankArgs) -> None:
    """In place on CUDA matrices of one device; see ``LowrankArgs``.

    The pointer tables come from :func:`on_device` (no host wait).
    """
    lib, _ = _native.load()
    device = args.weights[0].device
    stream = torch.cuda.current_stream(device).cuda_stream
    groups = group_indices(range(len(args.weights)), lambda p: (
        args.weights[p].dtype, *args.weights[p].shape, args.lefts[p].shape[1]))
    for (dtype, m, n, k), ps in groups.items():
        table = on_device([[args.weights[p].data_ptr() for p in ps],
                           [args.lefts[p].data_ptr() for p in ps],
                           [args.rights[p].data_ptr() for p in ps],
                           [args.keys[p] for p in ps],
                           [args.offsets[p] for p in ps]], torch.int64, device)
        lib.cuda_lowrank_update(DTYPE_CODES[dtype], table[0].data_ptr(), table[1].data_ptr(),
                                table[2].data_ptr(), len(ps), m, n, k, args.decay,
                                table[3].data_ptr(), table[4].data_ptr(),
                                args.rounding_seed is not None, args.rounding_seed or 0,
                                _device_index(device), stream)
