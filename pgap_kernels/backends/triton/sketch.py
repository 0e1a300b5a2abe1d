"""Triton implicit Gaussian-sum sketch: A @ omega or A.T @ omega, A generated in registers.

A[a, b] = sum_j coeffs[j] * xi(seeds[j], key, offset + a*n + b). Each program owns a
BLOCK_R x BLOCK_Q tile of one output and loops over (a slice of) the inner dimension in BLOCK_K
steps: it generates the matching tile of A from the stream, then multiplies it with the omega
tile by ``tl.dot(..., input_precision="ieee")``. A is never stored in memory.

Two ways to generate a tile:

* blocks (``offset % 4 == 0`` and ``n % 4 == 0``): every row of A starts on a Philox block, so a
  tile row of 4c columns is c whole blocks; one ``tl.philox`` call gives four values, joined
  into place with ``tl.interleave``;
* elements (any layout): one ``tl.philox`` call per element, its lane's Box–Muller pair.

When the output tiles alone would leave the GPU idle, the inner dimension is cut into slices
whose partial products land in a (slices, rows, q) buffer and are summed afterwards by
``torch.sum``: deterministic, no atomics.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import triton
import triton.language as tl

from ...args import SketchArgs
from .._batches import group_indices
from .._device_tables import on_device
from .._tables import stream_tables
from . import interpreting
from ._stream import element_normal, sum_block_normals
from .lowrank import aligned_16

MIN_STEPS_PER_SPLIT = 8  # BLOCK_K steps of the inner loop per slice on a GPU


def block_sizes(q: int) -> Tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_Q, BLOCK_K, num_warps): GPU tiles, or small ones under the interpreter."""
    if interpreting():
        return 16, 16, 16, 1
    return 64, min(64, max(16, triton.next_power_of_2(q))), 32, 4


def split_count(programs: int, inner: int, block_k: int, device: torch.device) -> int:
    """Slices of the inner dimension: enough programs for about two per SM (a few under the
    interpreter, so the tests cover the split path), each slice at least a few steps long."""
    if interpreting():
        target, min_steps = 4, 1
    else:
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
        min_steps = MIN_STEPS_PER_SPLIT
    return max(1, min(-(-target // programs), inner // (block_k * min_steps)))


@triton.jit
def _tile_blocks(seeds_ptr, coeffs_ptr, n_seeds, key, offset, n, a, b0,
                 ROWS: tl.constexpr, COLS: tl.constexpr):
    """Sum tile A[a, b0 : b0 + COLS] (a: ROWS int64 row indices); needs offset, n and b0
    divisible by 4 (each row of the tile is COLS / 4 whole Philox blocks)."""
    first = (offset + a * n + b0) >> 2
    block = first[:, None] + tl.arange(0, COLS // 4)[None, :].to(tl.int64)
    acc0, acc1, acc2, acc3 = sum_block_normals(seeds_ptr, coeffs_ptr, n_seeds, block, key)
    # interleave(x, y) alternates x and y along the last axis: lanes 0, 1, 2, 3 of each block.
    return tl.interleave(tl.interleave(acc0, acc2), tl.interleave(acc1, acc3))


@triton.jit
def _tile_elements(seeds_ptr, coeffs_ptr, n_seeds, key, offset, n, a, b0,
                   ROWS: tl.constexpr, COLS: tl.constexpr):
    """Sum tile A[a, b0 : b0 + COLS] for any offset and n: one Philox call per element."""
    index = offset + a[:, None] * n + (b0 + tl.arange(0, COLS).to(tl.int64))[None, :]
    acc = tl.zeros((ROWS, COLS), dtype=tl.float32)
    for j in range(n_seeds):
        seed = tl.load(seeds_ptr + j)
        coeff = tl.load(coeffs_ptr + j)
        acc += coeff * element_normal(seed, index, key)
    return acc


@triton.jit
def _sum_tile(seeds_ptr, coeffs_ptr, n_seeds, key, offset, n, a, b0,
              ROWS: tl.constexpr, COLS: tl.constexpr, BLOCKS: tl.constexpr):
    if BLOCKS:
        tile = _tile_blocks(seeds_ptr, coeffs_ptr, n_seeds, key, offset, n, a, b0, ROWS, COLS)
    else:
        tile = _tile_elements(seeds_ptr, coeffs_ptr, n_seeds, key, offset, n, a, b0, ROWS, COLS)
    return tile


@triton.jit
def _sketch_kernel(key_tab, offset_tab, omega_tab, out_tab, m, n, q,
                   seeds_ptr, coeffs_ptr, n_seeds, splits, split_len,
                   TRANSPOSE: tl.constexpr, BLOCKS: tl.constexpr, ALIGNED: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    if TRANSPOSE:  # out (n, q) = A.T @ omega (m, q)
        rows = n
        inner = m
    else:  # out (m, q) = A @ omega (n, q)
        rows = m
        inner = n
    tiles_q = tl.cdiv(q, BLOCK_Q)
    tiles = tl.cdiv(rows, BLOCK_R) * tiles_q
    pid = tl.program_id(0)
    p = pid // (tiles * splits)
    split = (pid // tiles) % splits
    tile = pid % tiles
    key = tl.load(key_tab + p).to(tl.uint32)
    offset = tl.load(offset_tab + p)
    omega = tl.load(omega_tab + p).to(tl.pointer_type(tl.float32))
    out = tl.load(out_tab + p).to(tl.pointer_type(tl.float32))
    if ALIGNED:
        omega = tl.multiple_of(omega, 16)
        out = tl.multiple_of(out, 16)
    out += split.to(tl.int64) * rows * q  # slice `split` of a (splits, rows, q) buffer

    r0 = (tile // tiles_q).to(tl.int64) * BLOCK_R
    r = r0 + tl.arange(0, BLOCK_R)
    c = (tile % tiles_q) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    c_in = (c < q)[None, :]
    lo = split.to(tl.int64) * split_len
    hi = tl.minimum(lo + split_len, inner)
    acc = tl.zeros((BLOCK_R, BLOCK_Q), dtype=tl.float32)
    for i0 in range(lo, hi, BLOCK_K):
        i = i0 + tl.arange(0, BLOCK_K)
        # Out-of-range inner rows of omega read as 0; the generated A stays finite there.
        om = tl.load(omega + i[:, None] * q + c[None, :], mask=(i < hi)[:, None] & c_in, other=0.0)
        if TRANSPOSE:  # tile A[i, r0 : r0 + BLOCK_R], transposed into the product
            a_t = _sum_tile(seeds_ptr, coeffs_ptr, n_seeds, key, offset, n, i, r0,
                            BLOCK_K, BLOCK_R, BLOCKS)
            acc = tl.dot(tl.trans(a_t), om, acc, input_precision="ieee")
        else:  # tile A[r, i0 : i0 + BLOCK_K]
            a_t = _sum_tile(seeds_ptr, coeffs_ptr, n_seeds, key, offset, n, r, i0,
                            BLOCK_R, BLOCK_K, BLOCKS)
            acc = tl.dot(a_t, om, acc, input_precision="ieee")
    tl.store(out + r[:, None] * q + c[None, :], acc, mask=(r < rows)[:, None] & c_in)


def gaussian_sketch(args: SketchArgs) -> List[torch.Tensor]:
    """float32 sketches on one device; see :class:`SketchArgs`.

    One launch per (m, n, q, block-aligned) group; tables live on the current stream.
    """
    device = args.omegas[0].device
    seeds, coeffs = stream_tables(args, device)
    outs: List[torch.Tensor] = [None] * len(args.problems)  # type: ignore[list-item]
    groups = group_indices(range(len(args.problems)), lambda p: (
        args.problems[p].m, args.problems[p].n, args.omegas[p].shape[1],
        args.problems[p].offset % 4 == 0 and args.problems[p].n % 4 == 0))
    for (m, n, q, blocks), ps in groups.items():
        rows, inner = (n, m) if args.transpose else (m, n)
        empty = rows == 0 or q == 0 or inner == 0
        for p in ps:
            outs[p] = (torch.zeros if empty else torch.empty)(rows, q, dtype=torch.float32, device=device)
        if empty:
            continue
        block_r, block_q, block_k, warps = block_sizes(q)
        tiles = triton.cdiv(rows, block_r) * triton.cdiv(q, block_q)
        splits = split_count(tiles * len(ps), inner, block_k, device)
        split_len = triton.cdiv(triton.cdiv(inner, splits), block_k) * block_k
        splits = triton.cdiv(inner, split_len)
        dests = ([torch.empty(splits, rows, q, dtype=torch.float32, device=device) for _ in ps]
                 if splits > 1 else [outs[p] for p in ps])
        omegas = [args.omegas[p] for p in ps]
        table = on_device([[args.problems[p].key for p in ps],
                           [args.problems[p].offset for p in ps],
                           [om.data_ptr() for om in omegas],
                           [d.data_ptr() for d in dests]], torch.int64, device)
        _sketch_kernel[(tiles * splits * len(ps),)](
            table[0], table[1], table[2], table[3], m, n, q,
            seeds, coeffs, len(args.seeds), splits, split_len,
            TRANSPOSE=args.transpose, BLOCKS=blocks, ALIGNED=aligned_16(omegas + dests),
            BLOCK_R=block_r, BLOCK_Q=block_q, BLOCK_K=block_k, num_warps=warps,
            enable_fp_fusion=False)  # the stream without contracted multiply-adds
        if splits > 1:
            for p, d in zip(ps, dests):
                torch.sum(d, dim=0, out=outs[p])
    return outs
