"""Stochastic rounding in plain PyTorch: the definition of docs/rng.md, "Stochastic rounding".

The rounding word of element e under (rounding_seed, key) is word e % 4 of Philox4x32-10 with
counter (b mod 2^32, b >> 32, key, 1), b = e // 4, and key (rounding_seed mod 2^32,
rounding_seed >> 32). With u24 = word >> 8, a float32 v rounds away from zero to lo + ulp iff
float(u24) < frac * 2^24, else to lo (lo = |v| truncated to the target's grid, frac = the
remainder in ulps); NaN, +-inf and |v| >= the target's largest finite value round to nearest.
"""
from __future__ import annotations

import torch

from ..._stream import ROUNDING_DOMAIN
from .philox import MASK32, block_words

BF16_MAX_BITS = 0x7F7F0000  # float32 bits of the largest finite bfloat16
F16_MAX_BITS = 0x477FE000   # float32 bits of 65504, the largest finite float16


def rounding_words(seed: int, key: int, start: int, count: int, device: torch.device) -> torch.Tensor:
    """int64 tensor of the rounding words (uint32 values) of elements [start, start + count)."""
    if count == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    first, last = start // 4, (start + count - 1) // 4
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    words = torch.stack(block_words(seed, key, blocks, ROUNDING_DOMAIN), dim=1).reshape(-1)
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
    u24 = words >> 8
    if dtype == torch.bfloat16:  # on the float32 bits: keep bits >> 16; frac*2^24 = low 16 << 8
        up = (u24 < ((mag & 0xFFFF) << 8)).to(torch.int64)
        rounded = _float(sign | (((mag >> 16) + up) << 16))
        keep = mag >= BF16_MAX_BITS
    elif dtype == torch.float16:  # ulp = 2^(max(E, -14) - 10), E the float32 exponent
        keep = mag >= F16_MAX_BITS
        mag = torch.where(keep, 0, mag)  # no float -> int conversion of inf or NaN below
        e = ((mag >> 23) - 127).clamp(min=-14)
        inv_ulp, ulp = _float((137 - e) << 23), _float((117 + e) << 23)
        q = _float(mag) * inv_ulp  # exact, < 2^11
        lo = q.to(torch.int32).to(torch.float32)  # floor (q >= 0)
        frac24 = (q - lo) * 16777216.0
        up = (u24.to(torch.float32) < frac24).to(torch.float32)
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
