"""Multi-tensor launch tables shared by the GPU backends (cuda, triton)."""
from __future__ import annotations

from typing import List, Tuple, Union

import torch

from .._stream import seed_to_int64
from ..args import PerturbArgs, SketchArgs, SubspaceArgs
from ._device_tables import on_device

META_FIELDS = 7  # data, mean, numel, offset, key, chunk_begin, src (see csrc/cuda/perturb.h)
# w, basis, m, n, r, offset, key, tile_begin, col_spans, rounding_index (see csrc/cuda/subspace.h)
SUBSPACE_META_FIELDS = 10
MAX_SUBSPACE_SPAN = 16  # column chunks per subspace tile: Xi drawn once per 16 chunks at most


def chunk_table(args: PerturbArgs, blocks_per_chunk: int, block_elements: int = 4
                ) -> Tuple[List[List[int]], int]:
    """Per-tensor int64 metadata rows and the total number of chunks.

    A chunk is ``blocks_per_chunk`` Philox blocks of one tensor, each ``block_elements`` stream
    elements (4 for the Gaussian stream, 128 for the Rademacher stream), starting at the block of
    the tensor's first element; chunks of tensor p are numbered from ``chunk_begin[p]``. Empty
    tensors must be removed beforehand. Returns the int64 rows (n_tensors lists of META_FIELDS
    ints; :func:`on_device` puts them on the device).
    """
    rows, begin = [], 0
    for p, t in enumerate(args.tensors):
        offset, numel = args.offsets[p], t.numel()
        span = (offset + numel - 1) // block_elements - offset // block_elements + 1
        mean_ptr = args.means[p].data_ptr() if args.means is not None else 0
        rows.append([t.data_ptr(), mean_ptr, numel, offset, args.keys[p], begin,
                     args.source(p).data_ptr()])
        begin += -(-span // blocks_per_chunk)
    return rows, begin


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def subspace_tiles(args: SubspaceArgs, rows: int, cols: int, span: int) -> int:
    """Tiles of ``rows`` rows x ``span`` chunks of ``cols`` columns over all matrices."""
    return sum(_cdiv(t.shape[0], rows) * _cdiv(_cdiv(t.shape[1], cols), span) for t in args.tensors)


def subspace_span(args: SubspaceArgs, rows: int, cols: int, target: int) -> int:
    """Column chunks per tile: the largest power of two up to MAX_SUBSPACE_SPAN that still
    leaves ``target`` tiles (a tile draws its rows of Xi once, so wider tiles draw less)."""
    span = MAX_SUBSPACE_SPAN
    while span > 1 and subspace_tiles(args, rows, cols, span) < target:
        span //= 2
    return span


def subspace_table(args: SubspaceArgs, rows: int, cols: int, span: int) -> Tuple[List[List[int]], int]:
    """Per-matrix int64 rows (lists of SUBSPACE_META_FIELDS ints) and the tile count.

    The tiles of matrix p are numbered from tile_begin[p], row block by row block, each row block
    cut into col_spans[p] tiles of ``span`` column chunks of ``cols`` columns. No empty matrix.
    """
    table, begin = [], 0
    for p, (t, v, offset, key) in enumerate(zip(args.tensors, args.bases, args.offsets, args.keys)):
        (m, n), r = t.shape, v.shape[1]
        col_spans = _cdiv(_cdiv(n, cols), span)
        table.append([t.data_ptr(), v.data_ptr(), m, n, r, offset, key, begin, col_spans,
                      args.rounding_index(p)])
        begin += _cdiv(m, rows) * col_spans
    return table, begin


def stream_tables(args: Union[PerturbArgs, SketchArgs, SubspaceArgs], device: torch.device
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeds (as int64 bit patterns) and float32 coefficients of ``args``, on ``device``
    (copied without blocking the host: :func:`on_device`)."""
    seeds = [seed_to_int64(s) for s in args.seeds] or [0]
    return on_device(seeds, torch.int64, device), on_device(args.coeffs or [0.0], torch.float32, device)
