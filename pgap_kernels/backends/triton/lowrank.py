"""Triton in-place low-rank update: one batched tiled-GEMM launch per (dtype, m, n, k) group.

Each program owns a BLOCK_M x BLOCK_N tile of one W_p: it accumulates L_p @ R_p.T over k in
BLOCK_K steps with ``tl.dot(..., input_precision="ieee")`` (true float32, never TF32), then its
epilogue loads the W tile, computes fma(decay, W, acc) and stores in place with one rounding. The
matrices of a group are reached through int64 pointer tables; nothing m x n is allocated.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import triton
import triton.language as tl

from ...args import LowrankArgs
from ..._stream import as_float32
from .._batches import group_indices
from .._device_tables import on_device
from . import interpreting
from ._rounding import round_stochastic, rounding_element_words, rounding_seed_table

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def block_sizes() -> Tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): GPU tiles, or small ones under the interpreter."""
    return (16, 16, 16, 1) if interpreting() else (64, 128, 32, 8)


def aligned_16(tensors: List[torch.Tensor]) -> bool:
    """Every data pointer on a 16-byte boundary (lets the kernels vectorize loads and stores)."""
    return all(t.data_ptr() % 16 == 0 for t in tensors)


@triton.jit
def update_tile(w, n, rows, cols, row_in, col_in, acc, decay, rseed, key, index,
                DTYPE: tl.constexpr, OVERWRITE: tl.constexpr, STOCHASTIC: tl.constexpr):
    """W[rows, cols] <- fma(decay, W, acc) (float32, as native and cuda: one rounding of the
    float32 result, not two as decay*W + acc), one rounding to DTYPE, masked to the matrix
    (n columns); OVERWRITE (decay == 0) stores acc without reading W (it may hold NaN).
    STOCHASTIC: W[i, j] rounds with the rounding word of element index + i*n + j under
    (rseed, key) (docs/rng.md, "Stochastic rounding"), else to nearest."""
    where = rows[:, None] * n + cols[None, :]
    mask = row_in[:, None] & col_in[None, :]
    if not OVERWRITE:
        acc = tl.fma(decay, tl.load(w + where, mask=mask).to(tl.float32), acc)
    if STOCHASTIC:
        acc = round_stochastic(acc, rounding_element_words(rseed, index + where, key), DTYPE)
    tl.store(w + where, acc.to(DTYPE), mask=mask)


@triton.jit
def _lowrank_kernel(w_tab, l_tab, r_tab, key_tab, index_tab, rseed_ptr, m, n, k, decay,
                    DTYPE: tl.constexpr, OVERWRITE: tl.constexpr, STOCHASTIC: tl.constexpr,
                    ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    tiles_n = tl.cdiv(n, BLOCK_N)
    tiles = tl.cdiv(m, BLOCK_M) * tiles_n
    pid = tl.program_id(0)
    p = pid // tiles
    tile = pid % tiles
    w = tl.load(w_tab + p).to(tl.pointer_type(DTYPE))
    left = tl.load(l_tab + p).to(tl.pointer_type(tl.float32))
    right = tl.load(r_tab + p).to(tl.pointer_type(tl.float32))
    if ALIGNED:
        w = tl.multiple_of(w, 16)
        left = tl.multiple_of(left, 16)
        right = tl.multiple_of(right, 16)
    rows = (tile // tiles_n).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tile % tiles_n).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in = rows < m
    col_in = cols < n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_in = (ks < k)[None, :]
        lt = tl.load(left + rows[:, None] * k + ks[None, :], mask=row_in[:, None] & k_in, other=0.0)
        rt = tl.load(right + cols[:, None] * k + ks[None, :], mask=col_in[:, None] & k_in, other=0.0)
        acc = tl.dot(lt, tl.trans(rt), acc, input_precision="ieee")
    update_tile(w, n, rows, cols, row_in, col_in, acc, decay, tl.load(rseed_ptr),
                tl.load(key_tab + p).to(tl.uint32), tl.load(index_tab + p), DTYPE, OVERWRITE,
                STOCHASTIC)


def lowrank_update(args: LowrankArgs) -> None:
    """In place on matrices of one device; see :class:`LowrankArgs`.

    One launch per (dtype, m, n, k) group; the int64 pointer tables are created on the current
    stream, so the caching allocator keeps them alive until the kernel has read them.
    """
    device = args.weights[0].device
    block_m, block_n, block_k, warps = block_sizes()
    decay = as_float32(args.decay)  # OVERWRITE on the value the kernel multiplies by
    rseed = rounding_seed_table(args.rounding_seed, device)
    groups = group_indices(range(len(args.weights)), lambda p: (
        args.weights[p].dtype, *args.weights[p].shape, args.lefts[p].shape[1]))
    for (dtype, m, n, k), ps in groups.items():
        mats = [x[p] for x in (args.weights, args.lefts, args.rights) for p in ps]
        rows = [t.data_ptr() for t in mats] + [args.keys[p] for p in ps] + [args.offsets[p] for p in ps]
        count = len(ps)
        table = on_device([rows[i * count:(i + 1) * count] for i in range(5)], torch.int64, device)
        tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
        _lowrank_kernel[(tiles * len(ps),)](
            table[0], table[1], table[2], table[3], table[4], rseed, m, n, k, decay,
            DTYPE=TL_DTYPES[dtype], OVERWRITE=decay == 0.0,
            STOCHASTIC=args.rounding_seed is not None and dtype != torch.float32,
            ALIGNED=aligned_16(mats),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
            enable_fp_fusion=False)  # no contractions but the explicit fma(decay, W, acc)
