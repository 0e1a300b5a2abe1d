"""CUDA fused perturbation: one kernel launch per dtype group (written dtype, source dtype), on
torch's current stream."""
from __future__ import annotations

import torch

from ... import _native
from ..._stream import DISTRIBUTION_CODES, RADEMACHER_BLOCK
from ...args import PerturbArgs
from .._groups import minus_in_two_passes, split_by_dtype
from .._device_tables import on_device
from .._tables import chunk_table, stream_tables
from .lowrank import _device_index


@minus_in_two_passes
def perturb_group(args: PerturbArgs) -> None:
    """On CUDA tensors of one device, in place or from ``args.sources``; see :class:`PerturbArgs`.

    The launch tables come from :func:`on_device` (no host wait). A chunk is CUDA_CHUNK_BLOCKS
    Philox blocks of 4 elements (Gaussian) or CUDA_RADEMACHER_CHUNK_BLOCKS blocks of 128
    (Rademacher).
    """
    lib, _ = _native.load()
    device = args.tensors[0].device
    seeds, coeffs = stream_tables(args, device)
    stream = torch.cuda.current_stream(device)
    rademacher = args.distribution == "rademacher"
    for code, src_code, group in split_by_dtype(args):
        rows, total_chunks = (chunk_table(group, lib.CUDA_RADEMACHER_CHUNK_BLOCKS, RADEMACHER_BLOCK)
                              if rademacher else chunk_table(group, lib.CUDA_CHUNK_BLOCKS))
        meta = on_device(rows, torch.int64, device)
        lib.cuda_perturb(code, meta.data_ptr(), len(rows), total_chunks, seeds.data_ptr(),
                         coeffs.data_ptr(), len(group.seeds), group.decay, group.mean_coeff,
                         group.means is not None, group.rounding_seed is not None,
                         group.rounding_seed or 0, DISTRIBUTION_CODES[group.distribution],
                         _device_index(device), stream.cuda_stream, src_code)
