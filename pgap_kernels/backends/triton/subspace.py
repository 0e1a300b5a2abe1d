"""Triton subspace perturbation: W <- decay*W + Xi @ V.T, Xi generated in registers.

One launch per dtype group over the multi-matrix tile table shared with the cuda backend
(``_tables.subspace_table``). A program owns BLOCK_M rows x ``span`` chunks of BLOCK_N columns of
one W. Xi's rows (Xi[i, k] = sum_j c_j xi(s_j, key, offset + i*r + k)) are the Gaussian-sum
matrix of a sketch with r columns, so the tile generator of the sketch kernel draws them:
once per program when r <= BLOCK_K (SINGLE_K), else one BLOCK_K slice at a time for each column
chunk. The product runs as ``tl.dot(..., input_precision="ieee")`` (float32, never TF32); the
columns of Xi past r meet zero rows of V, so they add exact zeros. The epilogue loads the W tile,
computes fma(decay, W, acc) (as native and cuda) and stores it in place with one rounding.
Nothing m x n is allocated and Xi never reaches global memory.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..._stream import as_float32
from ...args import SubspaceArgs
from .._batches import group_indices
from .._device_tables import on_device
from .._tables import SUBSPACE_META_FIELDS, stream_tables, subspace_span, subspace_table
from . import interpreting
from ._rounding import rounding_seed_table
from ._stream import table_row
from .lowrank import TL_DTYPES, update_tile
from .sketch import _sum_tile

_META = tl.constexpr(SUBSPACE_META_FIELDS)


def block_sizes(max_rank: int) -> Tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): GPU tiles, or small ones under the interpreter."""
    if interpreting():
        return 16, 16, 16, 1
    return 64, 128, min(64, max(16, triton.next_power_of_2(max_rank))), 8


def target_programs(device: torch.device) -> int:
    """Programs worth launching: a few per SM (a few under the interpreter, so that the tests
    cover programs with several column chunks)."""
    if interpreting():
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def _subspace_kernel(meta_ptr, seeds_ptr, coeffs_ptr, n_seeds, n_mats, span, decay, rseed_ptr,
                     DTYPE: tl.constexpr, OVERWRITE: tl.constexpr, STOCHASTIC: tl.constexpr,
                     BLOCKS: tl.constexpr,
                     SINGLE_K: tl.constexpr, ALIGNED: tl.constexpr, SEARCH_STEPS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tile = tl.program_id(0).to(tl.int64)
    row = table_row(meta_ptr, n_mats, tile, _META, 7, SEARCH_STEPS)  # the tile's matrix
    w = tl.load(row).to(tl.pointer_type(DTYPE))
    basis = tl.load(row + 1).to(tl.pointer_type(tl.float32))
    m = tl.load(row + 2)
    n = tl.load(row + 3)
    r = tl.load(row + 4)
    offset = tl.load(row + 5)
    key = tl.load(row + 6).to(tl.uint32)
    local = tile - tl.load(row + 7)
    col_spans = tl.load(row + 8)
    rounding_index = tl.load(row + 9)
    rseed = tl.load(rseed_ptr)
    if ALIGNED:  # 16-byte aligned W and n % 16 == 0: W rows start aligned, accesses vectorize
        w = tl.multiple_of(w, 16)
        n = tl.multiple_of(n, 16)

    rows = (local // col_spans) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_in = rows < m
    chunk_lo = (local % col_spans) * span
    chunk_hi = tl.minimum(chunk_lo + span, tl.cdiv(n, BLOCK_N))
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    if SINGLE_K:  # r <= BLOCK_K: this program's rows of Xi, drawn once
        xi = _sum_tile(seeds_ptr, coeffs_ptr, n_seeds, key, offset, r, rows, 0,
                       BLOCK_M, BLOCK_K, BLOCKS)
    for chunk in range(chunk_lo, chunk_hi):
        cols = tl.max_contiguous(tl.multiple_of(chunk * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64),
                                                BLOCK_N), BLOCK_N)
        col_in = cols < n
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if SINGLE_K:
            vt = tl.load(basis + cols[None, :] * r + ks[:, None],
                         mask=(ks < r)[:, None] & col_in[None, :], other=0.0)
            acc = tl.dot(xi, vt, acc, input_precision="ieee")
        else:
            for k0 in range(0, r, BLOCK_K):
                xk = _sum_tile(seeds_ptr, coeffs_ptr, n_seeds, key, offset, r, rows, k0,
                               BLOCK_M, BLOCK_K, BLOCKS)
                kk = k0 + ks
                vt = tl.load(basis + cols[None, :] * r + kk[:, None],
                             mask=(kk < r)[:, None] & col_in[None, :], other=0.0)
                acc = tl.dot(xk, vt, acc, input_precision="ieee")
        update_tile(w, n, rows, cols, row_in, col_in, acc, decay, rseed, key, rounding_index,
                    DTYPE, OVERWRITE, STOCHASTIC)


def subspace_update(args: SubspaceArgs) -> None:
    """In place on matrices of one device; see :class:`SubspaceArgs`.

    One launch per dtype group; the int64 tables are created on the current stream, so the
    caching allocator keeps them alive until the kernel has read them.
    """
    device = args.tensors[0].device
    seeds, coeffs = stream_tables(args, device)
    rseed = rounding_seed_table(args.rounding_seed, device)
    decay = as_float32(args.decay)  # OVERWRITE on the value the kernel multiplies by
    for dtype, ps in group_indices(range(len(args.tensors)), lambda p: args.tensors[p].dtype).items():
        group = args.subset(ps)
        max_rank = max(v.shape[1] for v in group.bases)
        block_m, block_n, block_k, warps = block_sizes(max_rank)
        span = subspace_span(group, block_m, block_n, target_programs(device))
        table, total = subspace_table(group, block_m, block_n, span)
        # Whole Philox blocks per row of Xi when every row starts on one (offset, r % 4 == 0).
        blocks = all(v.shape[1] % 4 == 0 for v in group.bases) and all(o % 4 == 0 for o in group.offsets)
        aligned = all(t.shape[1] % 16 == 0 and t.data_ptr() % 16 == 0 for t in group.tensors)
        _subspace_kernel[(total,)](
            on_device(table, torch.int64, device), seeds, coeffs, len(args.seeds), len(ps), span, decay, rseed,
            DTYPE=TL_DTYPES[dtype], OVERWRITE=decay == 0.0,
            STOCHASTIC=args.rounding_seed is not None and dtype != torch.float32, BLOCKS=blocks,
            SINGLE_K=max_rank <= block_k, ALIGNED=aligned, SEARCH_STEPS=max(1, len(ps).bit_length()),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
            enable_fp_fusion=False)  # no contracted multiply-adds but the explicit fma(decay, W, acc)
