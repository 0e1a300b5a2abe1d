"""CUDA implicit Gaussian-sum sketch: one batched launch per (m, n, q) group, torch's stream."""
from __future__ import annotations

from typing import List

import torch

from ... import _native
from ...args import SketchArgs
from .._batches import group_indices
from .._device_tables import on_device
from .._tables import stream_tables
from .lowrank import _device_index


def gaussian_sketch(args: SketchArgs) -> List[torch.Tensor]:
    """float32 sketches on one CUDA device; see ``SketchArgs``."""
    lib, _ = _native.load()
    device = args.omegas[0].device
    stream = torch.cuda.current_stream(device).cuda_stream
    seeds, coeffs = stream_tables(args, device)
    outs: List[torch.Tensor] = [None] * len(args.problems)  # type: ignore[list-item]
    groups = group_indices(range(len(args.problems)), lambda p: (
        args.problems[p].m, args.problems[p].n, args.omegas[p].shape[1]))
    for (m, n, q), ps in groups.items():
        rows = n if args.transpose else m
        for p in ps:
            outs[p] = torch.empty(rows, q, dtype=torch.float32, device=device)
        table = on_device([[args.problems[p].key for p in ps],
                           [args.problems[p].offset for p in ps],
                           [args.omegas[p].data_ptr() for p in ps],
                           [outs[p].data_ptr() for p in ps]], torch.int64, device)
        lib.cuda_gaussian_sketch(table[0].data_ptr(), table[1].data_ptr(), table[2].data_ptr(),
                                 table[3].data_ptr(), len(ps), m, n, q, seeds.data_ptr(),
                                 coeffs.data_ptr(), len(args.seeds), args.transpose,
                                 _device_index(device), stream)
    return outs
