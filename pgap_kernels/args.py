"""The argument classes of the ops: the interface every backend implements.

The public ops check and normalize their arguments (:mod:`pgap_kernels._checks` and the op's
front-end module) into one of these classes; every backend's op function receives it
(``backends/<name>/<op>.py``, looked up through :mod:`pgap_kernels.backends`):

* :class:`PerturbArgs` for ``perturb_``, ``perturbed``, ``perturbed_many`` and ``gaussian``;
* :class:`LowrankArgs` for ``lowrank_perturb_`` (``W <- decay*W + L @ R.T``; the public op
  folds ``scale`` and ``Z`` into L and R with :func:`lowrank_factors`);
* :class:`SketchArgs` (a list of :class:`SketchProblem`) for ``gaussian_sketch(_batch)``;
* :class:`SubspaceArgs` for ``subspace_perturb_``.

This module imports no op and no backend, so the backends and the self-check can use it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from ._precision import ieee_float32


@dataclass
class PerturbArgs:
    """Normalized, validated arguments of :func:`pgap_kernels.perturb_` and
    :func:`pgap_kernels.perturbed`.

    ``tensors`` are written; the decay term reads ``sources[p]`` (same shape, dtype and device,
    disjoint from every written tensor) or, when ``sources`` is None, ``tensors[p]`` itself.
    With a ``rounding_seed``, 16-bit results round stochastically: element i of tensor p with the
    rounding word of element ``offsets[p] + i`` under (rounding_seed, ``keys[p]``).
    ``distribution`` names the stream the seeded terms draw: "gaussian" (xi, philox4x32-10/v1)
    or "rademacher" (rho, philox4x32-10-rademacher/v1); docs/rng.md.
    """

    tensors: List[torch.Tensor]
    means: Optional[List[torch.Tensor]]
    seeds: List[int]
    coeffs: List[float]
    keys: List[int]
    offsets: List[int]
    decay: float
    mean_coeff: float
    sources: Optional[List[torch.Tensor]] = None
    rounding_seed: Optional[int] = None  # None: round to nearest; else stochastic (docs/rng.md)
    distribution: str = "gaussian"  # or "rademacher"
    # perturbed_many's out_minus: tensors like ``tensors`` that receive the same pass with the mean
    # and stream coefficients negated (out-of-place passes rounded to nearest only)
    minus: Optional[List[torch.Tensor]] = None

    def source(self, p: int) -> torch.Tensor:
        """The tensor the decay term of tensor p reads."""
        return self.tensors[p] if self.sources is None else self.sources[p]

    def split_minus(self) -> "Tuple[PerturbArgs, Optional[PerturbArgs]]":
        """(the pass into ``tensors``, the pass into ``minus`` with the mean and stream
        coefficients negated, or None): what a backend without a fused minus output runs one
        after the other. Negating a float32 coefficient is exact, so the second pass gives the
        bits a fused one gives."""
        plus = replace(self, minus=None)
        if self.minus is None:
            return plus, None
        return plus, replace(self, tensors=list(self.minus), coeffs=[-c for c in self.coeffs],
                             mean_coeff=-self.mean_coeff, minus=None)


@dataclass
class LowrankArgs:
    """``weights[p] <- decay*weights[p] + lefts[p] @ rights[p].T`` for every p, in place.

    weights[p]: (m, n) contiguous float32/bfloat16/float16 (mutated); lefts[p]: (m, k) and
    rights[p]: (n, k) contiguous float32, k >= 1; all on one device; no empty matrix.
    Accumulation in float32, one rounding to the weight's dtype: to nearest, or, with a
    ``rounding_seed``, stochastically (16-bit weights): element (i, j) of weights[p] with the
    rounding word of element ``offsets[p] + i*n + j`` under (rounding_seed, ``keys[p]``).
    ``decay == 0`` overwrites the weight without reading it.
    """

    weights: List[torch.Tensor]
    lefts: List[torch.Tensor]
    rights: List[torch.Tensor]
    decay: float
    keys: List[int]
    offsets: List[int]
    rounding_seed: Optional[int] = None


def lowrank_factors(u: torch.Tensor, z: torch.Tensor, v: torch.Tensor, scale: float
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 (L, R) with ``L @ R.T == scale * U @ Z @ V.T``, inner size k = min(r, s).

    Memory O((m + n) k), never m x n. Formed before any backend runs (by ``lowrank_perturb_``
    and the self-check), so every backend sees the same L, R.
    """
    uf, zf, vf = u.float(), z.float(), v.float()
    with ieee_float32():  # float32 whatever the user's TF32 / matmul-precision setting
        if z.shape[1] <= z.shape[0]:  # s <= r: L = scale*U@Z (m, s), R = V (n, s)
            return (torch.mm(uf, zf) * scale).contiguous(), vf.contiguous()
        return (uf * scale).contiguous(), torch.mm(vf, zf.t()).contiguous()  # k = r


class SketchProblem(NamedTuple):
    """One implicit m x n Gaussian sum A[a, b] = sum_j c_j xi(seed_j, key, offset + a*n + b)."""

    m: int
    n: int
    key: int = 0
    offset: int = 0


@dataclass
class SketchArgs:
    """``A_p @ omegas[p]`` (or ``A_p.T @ omegas[p]`` when ``transpose``) for every problem p.

    omegas[p]: contiguous float32, (n, q_p) or (m, q_p) when transposed, all on one device.
    Seeds and coefficients are shared by all problems. Backends return float32 (rows, q_p)
    tensors on that device, rows = m (n when transposed).
    """

    problems: List[SketchProblem]
    seeds: List[int]
    coeffs: List[float]
    omegas: List[torch.Tensor]
    transpose: bool


@dataclass
class SubspaceArgs:
    """``tensors[p] <- decay*tensors[p] + (sum_j coeffs[j] Xi_j,p) @ bases[p].T`` for every p.

    ``Xi_j,p[i, k] = xi(seeds[j], keys[p], offsets[p] + i*r_p + k)`` (an m_p x r_p matrix of the
    stream, row-major). tensors[p]: (m_p, n_p) contiguous float32/bfloat16/float16 (mutated);
    bases[p]: (n_p, r_p) contiguous float32, r_p >= 1; all on one device. Backends receive no
    empty matrix. Accumulation in float32, one rounding to the tensor's dtype: to nearest, or,
    with a ``rounding_seed``, stochastically: W_p[i, j] with the rounding word of element
    ``rounding_index(p) + i*n_p + j`` under (rounding_seed, ``keys[p]``). ``decay == 0``
    overwrites the tensor without reading it.
    """

    tensors: List[torch.Tensor]
    bases: List[torch.Tensor]
    seeds: List[int]
    coeffs: List[float]
    keys: List[int]
    offsets: List[int]
    decay: float
    rounding_seed: Optional[int] = None

    def subset(self, ps: Sequence[int]) -> "SubspaceArgs":
        """The arguments of the matrices at positions ``ps`` (same seeds, coefficients, decay,
        rounding)."""
        return SubspaceArgs([self.tensors[p] for p in ps], [self.bases[p] for p in ps], self.seeds,
                            self.coeffs, [self.keys[p] for p in ps], [self.offsets[p] for p in ps],
                            self.decay, self.rounding_seed)

    def rounding_index(self, p: int) -> int:
        """The stochastic-rounding index of W_p[0, 0]: a matrix whose Xi starts at row
        offsets[p] / r_p of the stream block is those rows of the logical full matrix.

        0 when rounding to nearest: no rounding word is drawn, and the index is range-checked
        (below 2**63, as the kernels' int64/uint64 tables need) only for stochastic rounding, so a
        valid offset near 2**63 must not reach the tables as offsets[p] / r_p * n_p."""
        if self.rounding_seed is None:
            return 0
        return self.offsets[p] // self.bases[p].shape[1] * self.tensors[p].shape[1]

    def nonempty(self) -> "SubspaceArgs":
        """The arguments without the empty matrices (backends receive none)."""
        return self.subset([p for p, t in enumerate(self.tensors) if t.numel() > 0])


__all__ = ["LowrankArgs", "PerturbArgs", "SketchArgs", "SketchProblem", "SubspaceArgs",
           "lowrank_factors"]
