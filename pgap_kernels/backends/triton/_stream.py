"""Triton pieces of the philox4x32-10/v1 stream (docs/rng.md), of the Rademacher stream
(philox4x32-10-rademacher/v1) and of the multi-tensor launch tables, shared by the triton kernels.

``tl.philox(seed, c0, c1, c2, c3)`` is the Random123 block function; the counter is
(block mod 2^32, block >> 32, key, 0), not ``tl.randn``'s. Uniforms come from the top 23 bits,
centred in their bin; Box–Muller runs in float32 with ``tl.log``, ``tl.sqrt_rn``, ``tl.cos``
and ``tl.sin``. Launch the kernels with ``enable_fp_fusion=False`` (no contracted multiply-adds).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..._stream import RADEMACHER_DOMAIN, TWO_PI, UNIFORM_SCALE

_SCALE = tl.constexpr(UNIFORM_SCALE)
_TWO_PI = tl.constexpr(TWO_PI)
_RADEMACHER_DOMAIN = tl.constexpr(RADEMACHER_DOMAIN)


@triton.jit
def uniform(x):
    """float32 uniform in (0, 1) of uint32 words: (2*(x >> 9) + 1) * 2^-24, exact."""
    return ((x >> 9) * 2 + 1).to(tl.float32) * _SCALE


@triton.jit
def counters(block, key):
    """Philox counter words of int64 block indices under a uint32 key."""
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = (block >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + key
    c3 = tl.zeros_like(c0)
    return c0, c1, c2, c3


@triton.jit
def box_muller(wa, wb):
    """The pair (r cos t, r sin t) of two Philox words: r = sqrt(-2 ln u(wa)), t = 2 pi u(wb)."""
    r = tl.sqrt_rn(-2.0 * tl.log(uniform(wa)))
    t = uniform(wb) * _TWO_PI
    return r * tl.cos(t), r * tl.sin(t)


@triton.jit
def block_normals(seed, c0, c1, c2, c3):
    """The four normals (lanes 0..3) of the Philox blocks with counter words c0..c3."""
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    z0, z1 = box_muller(w0, w1)
    z2, z3 = box_muller(w2, w3)
    return z0, z1, z2, z3


@triton.jit
def sum_block_normals(seeds_ptr, coeffs_ptr, n_seeds, block, key):
    """sum_j coeffs[j] * (the four normals of Philox blocks ``block`` (int64) under seeds[j]),
    accumulated in float32 in seed order: one tensor of ``block``'s shape per lane 0..3."""
    c0, c1, c2, c3 = counters(block, key)
    acc0 = tl.zeros(block.shape, dtype=tl.float32)
    acc1 = tl.zeros(block.shape, dtype=tl.float32)
    acc2 = tl.zeros(block.shape, dtype=tl.float32)
    acc3 = tl.zeros(block.shape, dtype=tl.float32)
    for j in range(n_seeds):
        seed = tl.load(seeds_ptr + j)
        coeff = tl.load(coeffs_ptr + j)
        z0, z1, z2, z3 = block_normals(seed, c0, c1, c2, c3)
        acc0 += coeff * z0
        acc1 += coeff * z1
        acc2 += coeff * z2
        acc3 += coeff * z3
    return acc0, acc1, acc2, acc3


@triton.jit
def sum_group_signs(seeds_ptr, coeffs_ptr, n_seeds, first_block, key, GROUPS: tl.constexpr):
    """The (GROUPS, 4) float32 tile whose row g, column k holds sum_j coeffs[j] *
    rho(seeds[j], key, 128*first_block + 4*g + k): the Rademacher stream (docs/rng.md) over
    GROUPS // 32 blocks of 128 elements from block ``first_block`` (int64), summed in seed order
    from coeffs[0] * rho_0. One ``tl.philox`` call per block and seed; GROUPS a multiple of 32.

    Row g is in block g // 32 and reads word (g % 32) // 8 of it, bits 4*(g % 8) + k."""
    c0, c1, c2, c3 = counters(first_block + tl.arange(0, GROUPS // 32).to(tl.int64), key)
    c3 = c3 + _RADEMACHER_DOMAIN
    word_of_row = tl.arange(0, 32)[None, :] // 8
    bit = ((tl.arange(0, GROUPS) % 8) * 4)[:, None] + tl.arange(0, 4)[None, :]
    acc = tl.zeros((GROUPS, 4), dtype=tl.float32)
    for j in range(n_seeds):
        seed = tl.load(seeds_ptr + j)
        coeff = tl.load(coeffs_ptr + j)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
        word = tl.where(word_of_row == 0, w0[:, None],
                        tl.where(word_of_row == 1, w1[:, None],
                                 tl.where(word_of_row == 2, w2[:, None], w3[:, None])))
        word = tl.reshape(word, (GROUPS,))  # row-major: row g is block g // 32, group g % 32
        sign = ((word[:, None] >> bit.to(tl.uint32)) & 1) << 31
        term = (coeff.to(tl.uint32, bitcast=True) ^ sign).to(tl.float32, bitcast=True)  # exact
        acc = tl.where(j == 0, term, acc + term)
    return acc


@triton.jit
def element_normal(seed, index, key):
    """xi(seed, key, index) for int64 stream indices: one Philox call per element, and only
    the Box–Muller pair of its lane."""
    c0, c1, c2, c3 = counters(index >> 2, key)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    lane = index & 3
    high = lane >= 2
    z_cos, z_sin = box_muller(tl.where(high, w2, w0), tl.where(high, w3, w1))
    return tl.where((lane & 1) == 1, z_sin, z_cos)


@triton.jit
def table_row(meta_ptr, n_rows, item, FIELDS: tl.constexpr, BEGIN: tl.constexpr,
              SEARCH_STEPS: tl.constexpr):
    """Pointer to the row of a multi-tensor launch table (n_rows rows of FIELDS int64) that owns
    work item ``item``: the last row whose column BEGIN (its first item) is <= item, found by a
    binary search of SEARCH_STEPS >= log2(n_rows + 1) steps."""
    lo = tl.zeros((), dtype=tl.int64)
    hi = lo + n_rows - 1
    for _ in tl.static_range(SEARCH_STEPS):
        mid = (lo + hi + 1) // 2
        go = tl.load(meta_ptr + mid * FIELDS + BEGIN) <= item
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
    return meta_ptr + lo * FIELDS
