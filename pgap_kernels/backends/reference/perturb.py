"""Reference fused perturbation: the definition every other backend is tested against."""
from __future__ import annotations

import torch

from ..._stream import as_float32
from ...args import PerturbArgs
from .._groups import minus_in_two_passes
from .philox import normals
from .rademacher import signs
from .rounding import store

CHUNK = 1 << 20  # elements drawn at a time, to bound the int64 working set


@torch.no_grad()
@minus_in_two_passes
def perturb_group(args: PerturbArgs) -> None:
    """For every tensor t (position p) with source s (t itself unless ``args.sources``), in
    float32 with one rounding to t.dtype:

    t <- decay*s + mean_coeff*mean[p] + sum_j coeffs[j] * xi(seeds[j], keys[p], offsets[p] + i).
    A decay that is 0 in float32 (e.g. 1e-50) overwrites t without reading s. Tensors may have
    mixed dtypes here. The rounding is to nearest, or stochastic with ``args.rounding_seed``
    (docs/rng.md). With ``args.distribution == "rademacher"`` the stream is rho (exactly +-1)
    instead of xi, and the sum starts from coeffs[0] * rho_0 (the C++ kernels' order, so that
    even the sign of a zero sum agrees).
    """
    rademacher = args.distribution == "rademacher"
    decay = as_float32(args.decay)
    for p, t in enumerate(args.tensors):
        flat = t.view(-1)
        src = args.source(p).view(-1)
        mean = args.means[p].view(-1) if args.means is not None else None
        for lo in range(0, flat.numel(), CHUNK):
            hi = min(lo + CHUNK, flat.numel())
            acc = torch.zeros(hi - lo, dtype=torch.float32, device=t.device)
            for j, (seed, coeff) in enumerate(zip(args.seeds, args.coeffs)):
                draw = signs if rademacher else normals
                term = torch.tensor(coeff, dtype=torch.float32) * draw(
                    seed, args.keys[p], args.offsets[p] + lo, hi - lo, t.device)
                if rademacher and j == 0:
                    acc = term
                else:
                    acc += term
            if decay == 0.0:  # 0 in float32 (e.g. 1e-50): s is not read
                out = torch.zeros_like(acc)
            else:
                out = torch.tensor(decay, dtype=torch.float32) * src[lo:hi].float()
            if mean is not None:
                out = out + torch.tensor(args.mean_coeff, dtype=torch.float32) * mean[lo:hi].float()
            store(flat[lo:hi], out + acc, args.rounding_seed, args.keys[p], args.offsets[p] + lo)
