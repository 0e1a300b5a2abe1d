"""Stochastic rounding in plain PyTorch: the definition of docs/rng.md, "Stochastic rounding"
(rounding words splitmix64-u16/v2).

The rounding word of element e under (rounding_seed R, key k) is 16 bits of a SplitMix64 hash:
base = mix64(R ^ (k * ROUNDING_KEY_MUL)), x = mix64(base + (e // 4 + 1) * ROUNDING_GAMMA), word
= (x >> (16 * (e % 4))) & 0xFFFF, all mod 2^64. A float32 v rounds away from zero to lo + ulp
iff word < frac * 2^16, else to lo (lo = |v| truncated to the target's grid, frac = the remainder
in ulps); NaN, +-inf and |v| >= the target's largest finite value round to nearest.

torch has no unsigned 64-bit multiply, so a 64-bit value is a pair of int64 tensors holding its
32-bit halves (hi, lo), and products are built from 32 x 32-bit ones split as in philox.py.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..._stream import MIX64_M1, MIX64_M2, ROUNDING_GAMMA, ROUNDING_KEY_MUL
from .philox import MASK32, mulhilo32

BF16_MAX_BITS = 0x7F7F0000  # float32 bits of the largest finite bfloat16
F16_MAX_BITS = 0x477FE000   # float32 bits of 65504, the largest finite float16
MASK64 = (1 << 64) - 1

U64 = Tuple[torch.Tensor, torch.Tensor]  # (hi, lo): the 32-bit halves of 64-bit values


def mix64_int(z: int) -> int:
    """SplitMix64's finalizer on a Python int in [0, 2^64)."""
    z = ((z ^ (z >> 30)) * MIX64_M1) & MASK64
    z = ((z ^ (z >> 27)) * MIX64_M2) & MASK64
    return z ^ (z >> 31)


def rounding_base(seed: int, key: int) -> int:
    """The hash state of (rounding seed, key): mix64(seed ^ (key * ROUNDING_KEY_MUL mod 2^64))."""
    return mix64_int(seed ^ ((key * ROUNDING_KEY_MUL) & MASK64))


def _mul(x: U64, m: int) -> U64:
    """x * m mod 2^64 for a constant m: lo*m_lo in full, plus (lo*m_hi + hi*m_lo) << 32."""
    hi, lo = x
    p_hi, p_lo = mulhilo32(lo, m & MASK32)
    cross = mulhilo32(lo, m >> 32)[1] + mulhilo32(hi, m & MASK32)[1]
    return (p_hi + cross) & MASK32, p_lo


def _xorshift(x: U64, s: int) -> U64:
    """x ^ (x >> s) for 0 < s < 32."""
    hi, lo = x
    return hi ^ (hi >> s), lo ^ ((lo >> s) | ((hi << (32 - s)) & MASK32))


def _mix64(x: U64) -> U64:
    return _xorshift(_mul(_xorshift(_mul(_xorshift(x, 30), MIX64_M1), 27), MIX64_M2), 31)


def block_hashes(seed: int, key: int, blocks: torch.Tensor) -> U64:
    """mix64(base + (b + 1) * ROUNDING_GAMMA) of int64 tensor ``blocks`` (each in [0, 2^62))."""
    base = rounding_base(seed, key)
    hi, lo = _mul(((blocks + 1) >> 32, (blocks + 1) & MASK32), ROUNDING_GAMMA)
    lo = lo + (base & MASK32)
    hi = (hi + (base >> 32) + (lo >> 32)) & MASK32
    return _mix64((hi, lo & MASK32))


def rounding_words(seed: int, key: int, start: int, count: int, device: torch.device) -> torch.Tensor:
    """int64 tensor of the rounding words (values in [0, 2^16)) of elements [start, start + count)."""
    if count == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    first, last = start // 4, (start + count - 1) // 4
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    hi, lo = block_hashes(seed, key, blocks)
    words = torch.stack((lo & 0xFFFF, lo >> 16, hi & 0xFFFF, hi >> 16), dim=1).reshape(-1)
    shift = start - 4 * first
    return words[shift:shift + count]


def _float(bits: torch.Tensor) -> torch.Tensor:
    """float32 values of int64 tensors holding uint32 bit patterns."""
    return (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)


def _bits(v: torch.Tensor) -> torch.Tensor:
    """uint32 bit patterns (in int64) of a float32 tensor."""
    return v.view(torch.int32).to(torch.int64) & MASK32


def round_stochastic(v: torch.Tensor, words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 ``v`` rounded stochastically to ``dtype``'s grid with rounding words ``words``
    (same shape), as float32 values that ``dtype`` holds exactly (float32: ``v`` itself)."""
    if dtype == torch.float32:
        return v
    bits = _bits(v.contiguous())
    sign, mag = bits & 0x80000000, bits & 0x7FFFFFFF
    if dtype == torch.bfloat16:  # on the float32 bits: keep bits >> 16; frac*2^16 = the low 16
        up = (words < (mag & 0xFFFF)).to(torch.int64)
        rounded = _float(sign | (((mag >> 16) + up) << 16))
        keep = mag >= BF16_MAX_BITS
    elif dtype == torch.float16:  # ulp = 2^(max(E, -14) - 10), E the float32 exponent
        keep = mag >= F16_MAX_BITS
        mag = torch.where(keep, 0, mag)  # no float -> int conversion of inf or NaN below
        e = ((mag >> 23) - 127).clamp(min=-14)
        inv_ulp, ulp = _float((137 - e) << 23), _float((117 + e) << 23)
        q = _float(mag) * inv_ulp  # exact, < 2^11
        lo = q.to(torch.int32).to(torch.float32)  # floor (q >= 0)
        frac16 = (q - lo) * 65536.0  # an integer unless |v| < 2^-17
        up = (words.to(torch.float32) < frac16).to(torch.float32)
        rounded = _float(_bits((lo + up) * ulp) | sign)
    else:
        raise TypeError(f"no stochastic rounding to {dtype}")
    return torch.where(keep, v, rounded.view_as(v))


def store(dst: torch.Tensor, v: torch.Tensor, rounding_seed, key: int, start: int) -> None:
    """``dst.copy_(v)`` for contiguous ``dst`` whose element l is logical element start + l:
    rounded to nearest when ``rounding_seed`` is None, else stochastically."""
    if rounding_seed is not None and dst.dtype != torch.float32:
        words = rounding_words(rounding_seed, key, start, v.numel(), v.device).view(v.shape)
        v = round_stochastic(v, words, dst.dtype)
    dst.copy_(v)
