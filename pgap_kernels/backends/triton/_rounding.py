"""Triton stochastic rounding: the rule of docs/rng.md, "Stochastic rounding" (the C++ builds
share it in csrc/include/pgap/rounding.h).

The rounding word of element e under (rounding_seed, key) is word e % 4 of ``tl.philox`` with
the stream's counter for block e // 4 and counter word c3 = 1 (the stream uses c3 = 0).
``round_stochastic`` returns float32 values that the target dtype holds exactly, so the usual
round-to-nearest conversion then stores them unchanged.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._stream import ROUNDING_DOMAIN, optional_seed_to_int64
from .._device_tables import on_device
from ._stream import counters

_DOMAIN = tl.constexpr(ROUNDING_DOMAIN)


def rounding_seed_table(rounding_seed, device: torch.device) -> torch.Tensor:
    """The rounding seed (int64 bit pattern; 0 when rounding to nearest) as a one-element tensor."""
    return on_device([optional_seed_to_int64(rounding_seed) or 0], torch.int64, device)


@triton.jit
def rounding_block_words(seed, block, key):
    """The four rounding words (lanes 0..3) of blocks ``block`` (int64) under (seed, key)."""
    c0, c1, c2, c3 = counters(block, key)
    return tl.philox(seed, c0, c1, c2, c3 + _DOMAIN)


@triton.jit
def rounding_element_words(seed, index, key):
    """The rounding word of each int64 element index under (seed, key): one Philox call each."""
    w0, w1, w2, w3 = rounding_block_words(seed, index >> 2, key)
    lane = index & 3
    return tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))


@triton.jit
def round_stochastic(v, x, DTYPE: tl.constexpr):
    """float32 ``v`` rounded stochastically to DTYPE's grid with uint32 rounding words ``x``, as
    float32 (DTYPE float32: ``v``). NaN, inf and |v| >= DTYPE's largest finite value: ``v``."""
    if DTYPE == tl.float32:
        return v
    bits = v.to(tl.uint32, bitcast=True)
    sign = (bits >> 31) << 31
    mag = bits ^ sign
    u24 = x >> 8
    if DTYPE == tl.bfloat16:  # on the float32 bits: keep bits >> 16; frac*2^24 = low 16 << 8
        up = (u24 < ((mag & 0xFFFF) << 8)).to(tl.uint32)
        rounded = (sign | (((mag >> 16) + up) << 16)).to(tl.float32, bitcast=True)
        keep = mag >= 0x7F7F0000
    else:  # float16: ulp = 2^(max(E, -14) - 10), E the float32 exponent
        keep = mag >= 0x477FE000
        mag = tl.where(keep, 0, mag)  # no float -> int conversion of inf or NaN below
        e = tl.maximum((mag >> 23).to(tl.int32) - 127, -14)
        inv_ulp = ((137 - e) << 23).to(tl.float32, bitcast=True)
        ulp = ((117 + e) << 23).to(tl.float32, bitcast=True)
        q = mag.to(tl.float32, bitcast=True) * inv_ulp  # exact, < 2^11
        lo = q.to(tl.int32).to(tl.float32)  # floor (q >= 0)
        frac24 = (q - lo) * 16777216.0
        up = tl.where(u24.to(tl.int32).to(tl.float32) < frac24, 1.0, 0.0)
        rounded = (((lo + up) * ulp).to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    return tl.where(keep, v, rounded)
