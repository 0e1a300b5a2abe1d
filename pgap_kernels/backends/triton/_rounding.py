"""Triton stochastic rounding: the rounding words splitmix64-u16/v2 and the rule of docs/rng.md,
"Stochastic rounding" (the C++ builds share them in csrc/include/pgap/rounding.h).

The rounding word of element e under (rounding_seed R, key k) is 16 bits of a SplitMix64 hash in
uint64 arithmetic (no Philox): base = mix64(R ^ (k * ROUNDING_KEY_MUL)), x = mix64(base +
(e // 4 + 1) * ROUNDING_GAMMA), word = (x >> (16 * (e % 4))) & 0xFFFF, all mod 2^64.
``round_stochastic`` returns float32 values that the target dtype holds exactly, so the usual
round-to-nearest conversion then stores them unchanged.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._stream import MIX64_M1, MIX64_M2, ROUNDING_GAMMA, ROUNDING_KEY_MUL, optional_seed_to_int64
from .._device_tables import on_device

_M1 = tl.constexpr(MIX64_M1)
_M2 = tl.constexpr(MIX64_M2)
_GAMMA = tl.constexpr(ROUNDING_GAMMA)
_KEY_MUL = tl.constexpr(ROUNDING_KEY_MUL)


def rounding_seed_table(rounding_seed, device: torch.device) -> torch.Tensor:
    """The rounding seed (int64 bit pattern; 0 when rounding to nearest) as a one-element tensor."""
    return on_device([optional_seed_to_int64(rounding_seed) or 0], torch.int64, device)


@triton.jit
def _mix64(z):
    """SplitMix64's finalizer on uint64 values (products mod 2^64)."""
    z = (z ^ (z >> 30)) * _M1
    z = (z ^ (z >> 27)) * _M2
    return z ^ (z >> 31)


@triton.jit
def rounding_base(seed, key):
    """The hash state of (rounding seed: int64 bit pattern, key: uint32)."""
    return _mix64(seed.to(tl.uint64, bitcast=True) ^ (key.to(tl.uint64) * _KEY_MUL))


@triton.jit
def _block_hash(base, block):
    """The 64-bit hash of int64 block indices ``block`` (>= 0) under hash state ``base``."""
    return _mix64(base + (block + 1).to(tl.uint64) * _GAMMA)


@triton.jit
def rounding_block_words(seed, block, key):
    """The four rounding words (lanes 0..3, uint32) of blocks ``block`` (int64) under (seed, key):
    the 16-bit slices of each block's hash, lane 0 the lowest."""
    x = _block_hash(rounding_base(seed, key), block)
    return ((x & 0xFFFF).to(tl.uint32), ((x >> 16) & 0xFFFF).to(tl.uint32),
            ((x >> 32) & 0xFFFF).to(tl.uint32), (x >> 48).to(tl.uint32))


@triton.jit
def rounding_element_words(seed, index, key):
    """The rounding word (uint32) of each int64 element index under (seed, key)."""
    x = _block_hash(rounding_base(seed, key), index >> 2)
    return ((x >> ((index & 3) * 16).to(tl.uint64)) & 0xFFFF).to(tl.uint32)


@triton.jit
def round_stochastic(v, x, DTYPE: tl.constexpr):
    """float32 ``v`` rounded stochastically to DTYPE's grid with rounding words ``x`` (uint32
    values below 2^16), as
    float32 (DTYPE float32: ``v``). NaN, inf and |v| >= DTYPE's largest finite value: ``v``."""
    if DTYPE == tl.float32:
        return v
    bits = v.to(tl.uint32, bitcast=True)
    sign = (bits >> 31) << 31
    mag = bits ^ sign
    if DTYPE == tl.bfloat16:  # on the float32 bits: keep bits >> 16; frac*2^16 = the low 16
        up = (x < (mag & 0xFFFF)).to(tl.uint32)
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
        frac16 = (q - lo) * 65536.0  # an integer unless |v| < 2^-17
        up = tl.where(x.to(tl.int32).to(tl.float32) < frac16, 1.0, 0.0)
        rounded = (((lo + up) * ulp).to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    return tl.where(keep, v, rounded)
