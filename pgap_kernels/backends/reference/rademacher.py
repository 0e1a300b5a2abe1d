"""The Rademacher stream philox4x32-10-rademacher/v1 in plain PyTorch (docs/rng.md).

rho(seed, key, i) is bit i % 32 of word (i // 32) % 4 of the Philox4x32-10 block i // 128 under
counter (b mod 2^32, b >> 32, key, 2) and key (seed mod 2^32, seed >> 32): +1 for a 0 bit, -1
for a 1 bit.
"""
from __future__ import annotations

import torch

from ..._stream import RADEMACHER_BLOCK, RADEMACHER_DOMAIN
from .philox import block_words


def signs(seed: int, key: int, start: int, count: int, device: torch.device) -> torch.Tensor:
    """float32 tensor of rho(seed, key, i) (exactly +1.0 or -1.0) for i in [start, start + count)."""
    if count == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first, last = start // RADEMACHER_BLOCK, (start + count - 1) // RADEMACHER_BLOCK
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    words = torch.stack(block_words(seed, key, blocks, RADEMACHER_DOMAIN), dim=1)  # (blocks, 4)
    bit = torch.arange(32, dtype=torch.int64, device=device)
    ones = ((words[:, :, None] >> bit) & 1).reshape(-1)  # element 128*b + 32*q + k: bit k of word q
    shift = start - RADEMACHER_BLOCK * first
    return (1 - 2 * ones[shift:shift + count]).to(torch.float32)
