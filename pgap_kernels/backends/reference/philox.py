"""The philox4x32-10/v1 stream in plain PyTorch integer arithmetic (int64 tensors, any device).

Every 32-bit word lives in an int64 tensor; products are split into 16-bit halves so that
nothing overflows int64.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..._stream import (PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1, TWO_PI,
                        UNIFORM_SCALE)

MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF

Words = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def mulhilo32(a: torch.Tensor, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a * m, for int64 tensors a in [0, 2^32) and constant m."""
    # a*m = p_hi*2^16 + p_lo with p_lo, p_hi < 2^48: each fits int64, the full product would not.
    p_lo = (a & MASK16) * m
    p_hi = (a >> 16) * m
    lo = (p_lo + ((p_hi & MASK16) << 16)) & MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32_10(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
                  k0: int, k1: int) -> Words:
    """Random123 Philox4x32-10 on int64 tensors holding uint32 values; key (k0, k1) ints."""
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = mulhilo32(c0, PHILOX_M0)
        hi1, lo1 = mulhilo32(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def block_words(seed: int, key: int, blocks: torch.Tensor, domain: int = 0) -> Words:
    """The four words of blocks ``blocks`` (int64 tensor) for (seed, key) and counter word
    c3 = ``domain`` (0: the Gaussian stream; RADEMACHER_DOMAIN: the Rademacher stream)."""
    c0 = blocks & MASK32
    c1 = blocks >> 32
    c2 = torch.full_like(blocks, key)
    c3 = torch.full_like(blocks, domain)
    return philox4x32_10(c0, c1, c2, c3, seed & MASK32, seed >> 32)


def word_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """float32 uniforms (2*(x >> 9) + 1) * 2^-24, strictly inside (0, 1)."""
    return ((x >> 9) * 2 + 1).to(torch.float32) * UNIFORM_SCALE


def box_muller(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(r cos 2 pi u_b, r sin 2 pi u_b), r = sqrt(-2 ln u_a), in float32."""
    r = torch.sqrt(-2.0 * torch.log(word_to_uniform(a)))
    theta = word_to_uniform(b) * TWO_PI
    return r * torch.cos(theta), r * torch.sin(theta)


def normals(seed: int, key: int, start: int, count: int, device: torch.device) -> torch.Tensor:
    """float32 tensor of xi(seed, key, i) for i in [start, start + count)."""
    if count == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first, last = start // 4, (start + count - 1) // 4
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    w0, w1, w2, w3 = block_words(seed, key, blocks)
    z0, z1 = box_muller(w0, w1)
    z2, z3 = box_muller(w2, w3)
    z = torch.stack((z0, z1, z2, z3), dim=1).reshape(-1)
    shift = start - 4 * first
    return z[shift:shift + count]
