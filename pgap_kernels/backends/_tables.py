"""Multi-tensor launch tables shared by the GPU backends (cuda, triton)."""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .._stream import seed_to_int64
from .._lowrank_validation import SketchArgs
from .._validation import PerturbArgs

META_FIELDS = 6  # data, mean, numel, offset, key, chunk_begin (see csrc/cuda/perturb.h)


def chunk_table(args: PerturbArgs, blocks_per_chunk: int) -> Tuple[torch.Tensor, int]:
    """Per-tensor int64 metadata rows and the total number of chunks.

    A chunk is ``blocks_per_chunk`` Philox blocks (4 stream elements each) of one tensor;
    chunks of tensor p are numbered from ``chunk_begin[p]``. Empty tensors must be removed
    beforehand. Returns a CPU tensor of shape (n_tensors, META_FIELDS).
    """
    rows, begin = [], 0
    for p, t in enumerate(args.tensors):
        offset, numel = args.offsets[p], t.numel()
        span = (offset + numel - 1) // 4 - offset // 4 + 1
        mean_ptr = args.means[p].data_ptr() if args.means is not None else 0
        rows.append([t.data_ptr(), mean_ptr, numel, offset, args.keys[p], begin])
        begin += -(-span // blocks_per_chunk)
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, META_FIELDS), begin


def stream_tables(args: Union[PerturbArgs, SketchArgs], device: torch.device
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeds (as int64 bit patterns) and float32 coefficients of ``args``, on ``device``."""
    seeds = torch.tensor([seed_to_int64(s) for s in args.seeds] or [0], dtype=torch.int64)
    coeffs = torch.tensor(args.coeffs or [0.0], dtype=torch.float32)
    return seeds.to(device), coeffs.to(device)
