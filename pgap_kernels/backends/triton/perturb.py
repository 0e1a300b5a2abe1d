"""Triton fused perturbation: one launch per dtype group (written dtype, source dtype) over a
multi-tensor chunk table.

Each program handles BLOCKS groups of 4 consecutive stream elements (4*BLOCKS elements) of one
tensor. Gaussian: a group is a Philox block; the program calls ``tl.philox(seed, c0, c1, c2, c3)``
with the philox4x32-10/v1 counter (block mod 2^32, block >> 32, key, 0): one call gives four
normals (not ``tl.randn``, whose counter differs). Rademacher (RADEMACHER): the groups start at
a 128-element block and one ``tl.philox`` call per 32 groups gives their signs. The stream code
lives in ``_stream.py``, shared with the other triton kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._stream import RADEMACHER_BLOCK, as_float32
from ...args import PerturbArgs
from .._device_tables import on_device
from .._groups import minus_in_two_passes, split_by_dtype
from .._tables import META_FIELDS, chunk_table, stream_tables
from ._rounding import round_stochastic, rounding_block_words, rounding_seed_table
from ._stream import sum_block_normals, sum_group_signs, table_row

BLOCKS = 256  # Philox blocks per program: 1024 elements
TL_DTYPES = {0: tl.float32, 1: tl.bfloat16, 2: tl.float16}
_META = tl.constexpr(META_FIELDS)


@triton.jit
def _by_lane(x0, x1, x2, x3):
    """The (BLOCKS, 4) tile whose column k holds xk (one value per Philox block and lane)."""
    lane = tl.arange(0, 4)[None, :]
    return tl.where(lane == 0, x0[:, None],
                    tl.where(lane == 1, x1[:, None], tl.where(lane == 2, x2[:, None], x3[:, None])))


@triton.jit
def _perturb_kernel(meta_ptr, seeds_ptr, coeffs_ptr, n_seeds, n_tensors, decay, mean_coeff,
                    rseed_ptr, DTYPE: tl.constexpr, SRC_DTYPE: tl.constexpr, HAS_MEAN: tl.constexpr,
                    OVERWRITE: tl.constexpr, STOCHASTIC: tl.constexpr, BLOCKS: tl.constexpr,
                    SEARCH_STEPS: tl.constexpr, ALIGNED: tl.constexpr,
                    RADEMACHER: tl.constexpr):
    chunk = tl.program_id(0).to(tl.int64)
    row = table_row(meta_ptr, n_tensors, chunk, _META, 5, SEARCH_STEPS)  # the chunk's tensor
    data = tl.load(row).to(tl.pointer_type(DTYPE))
    numel = tl.load(row + 2)
    offset = tl.load(row + 3)
    key = tl.load(row + 4).to(tl.uint32)
    chunk_begin = tl.load(row + 5)

    # block: the groups of 4 stream elements (Philox blocks of the Gaussian stream) of the tile
    if RADEMACHER:  # BLOCKS // 32 Rademacher blocks from the one of the tensor's first element
        first_block = offset // 128 + (chunk - chunk_begin) * (BLOCKS // 32)
        block = first_block * 32 + tl.arange(0, BLOCKS).to(tl.int64)
        acc = sum_group_signs(seeds_ptr, coeffs_ptr, n_seeds, first_block, key, BLOCKS)
    else:
        block = offset // 4 + (chunk - chunk_begin) * BLOCKS + tl.arange(0, BLOCKS).to(tl.int64)
        acc0, acc1, acc2, acc3 = sum_block_normals(seeds_ptr, coeffs_ptr, n_seeds, block, key)
        acc = _by_lane(acc0, acc1, acc2, acc3)

    lane = tl.arange(0, 4)[None, :]
    # the mean and the decay term's source (data in place) are SRC_DTYPE (DTYPE but for copies
    # into another dtype)
    mean = tl.load(row + 1).to(tl.pointer_type(SRC_DTYPE))
    src = tl.load(row + 6).to(tl.pointer_type(SRC_DTYPE))
    if ALIGNED:
        # offset % 4 == 0, numel % 4 == 0 and 16-byte aligned pointers (checked on the host):
        # each tile row is one whole, aligned Philox block, masked as a unit, so the loads and
        # stores vectorize. local[i, j] = first[i] + j: along dim 1 groups of 4 contiguous values
        # start at multiples of 4; along dim 0 no two are contiguous (a step of 4), so every
        # element is its own group and first[i] + 1 is odd: divisibility [1, 4], contiguity [1, 4]
        # (tl.multiple_of: values[d] divides the first element of every contiguous group along d).
        if RADEMACHER:  # the tile starts at a 128-element block, maybe before the tensor
            first = block * 4 - offset
            inside = (first >= 0) & (first < numel)
        else:
            first = (chunk - chunk_begin) * BLOCKS * 4 + tl.arange(0, BLOCKS).to(tl.int64) * 4
            inside = first < numel
        local = tl.max_contiguous(tl.multiple_of(first[:, None] + lane, [1, 4]), [1, 4])
        mask = tl.broadcast_to(inside[:, None], (BLOCKS, 4))
        data = tl.multiple_of(data, 16)
        mean = tl.multiple_of(mean, 16)
        src = tl.multiple_of(src, 16)
    else:
        local = block[:, None] * 4 + lane - offset
        mask = (local >= 0) & (local < numel)
    if OVERWRITE:
        out = tl.zeros((BLOCKS, 4), dtype=tl.float32)
    else:
        out = decay * tl.load(src + local, mask=mask).to(tl.float32)
    if HAS_MEAN:
        out = out + mean_coeff * tl.load(mean + local, mask=mask).to(tl.float32)
    out = out + acc
    if STOCHASTIC:  # the rounding words of the same element indices
        x0, x1, x2, x3 = rounding_block_words(tl.load(rseed_ptr), block, key)
        out = round_stochastic(out, _by_lane(x0, x1, x2, x3), DTYPE)
    tl.store(data + local, out.to(DTYPE), mask=mask)


def _aligned(group: PerturbArgs) -> bool:
    """Tile rows are whole Philox blocks on 16-byte boundaries: offsets and numels divisible
    by 4, every pointer 16-byte aligned."""
    ptrs = [t.data_ptr() for t in group.tensors] + [m.data_ptr() for m in group.means or []]
    ptrs += [s.data_ptr() for s in group.sources or []]
    return (all(o % 4 == 0 for o in group.offsets) and all(p % 16 == 0 for p in ptrs)
            and all(t.numel() % 4 == 0 for t in group.tensors))


@minus_in_two_passes
def perturb_group(args: PerturbArgs) -> None:
    """On tensors of one device, in place or from ``args.sources``, rounded to nearest or
    stochastically; see :class:`PerturbArgs`."""
    device = args.tensors[0].device
    seeds, coeffs = stream_tables(args, device)
    rseed = rounding_seed_table(args.rounding_seed, device)
    decay = as_float32(args.decay)  # OVERWRITE on the value the kernel multiplies by
    rademacher = args.distribution == "rademacher"
    for code, src_code, group in split_by_dtype(args):
        rows, total_chunks = (chunk_table(group, BLOCKS // 32, RADEMACHER_BLOCK) if rademacher
                              else chunk_table(group, BLOCKS))
        meta = on_device(rows, torch.int64, device)
        n = len(rows)
        _perturb_kernel[(total_chunks,)](
            meta, seeds, coeffs, len(group.seeds), n,
            decay, as_float32(group.mean_coeff), rseed,
            DTYPE=TL_DTYPES[code], SRC_DTYPE=TL_DTYPES[src_code], HAS_MEAN=group.means is not None,
            OVERWRITE=decay == 0.0,
            STOCHASTIC=group.rounding_seed is not None and code != 0, BLOCKS=BLOCKS,
            SEARCH_STEPS=max(1, n.bit_length()), ALIGNED=_aligned(group), RADEMACHER=rademacher,
            enable_fp_fusion=False)  # like the C++ builds: no contracted multiply-adds
