"""Argument checks and normalized arguments of ``subspace_perturb_``, run before anything is touched.

Every backend receives a :class:`SubspaceArgs`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ._lowrank_validation import _check_matrix, _matrix_list, check_disjoint, check_weight
from ._stream import INDEX_LIMIT
from ._validation import (FloatOrFloats, IntOrInts, check_finite, check_keys_offsets,
                          check_rounding, check_seeds_coeffs)


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
        return self.subset([p for p, t in enumerate(self.tensors) if t.numel() > 0])


def validate_subspace(tensors, bases, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                      keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                      decay: float, rounding: str = "nearest",
                      rounding_seed: Optional[int] = None) -> SubspaceArgs:
    """Check every argument of ``subspace_perturb_``; raise TypeError/ValueError naming it.

    Shapes, dtypes, devices and ranges only: memory overlaps need data pointers and are checked
    by :func:`check_subspace_memory` on the real tensors, still before anything is modified.
    Bases become contiguous (a copy only where they are not).
    """
    single = isinstance(tensors, torch.Tensor)
    ts = _matrix_list(tensors, "tensors")
    if single and not isinstance(bases, torch.Tensor):
        raise TypeError("tensors is a single tensor, so bases must be a single tensor too")
    bs = _matrix_list(bases, "bases")
    if len(bs) != len(ts):
        raise ValueError(f"bases has {len(bs)} matrices but tensors has {len(ts)}")
    device = None
    spans = []
    for p, (t, v) in enumerate(zip(ts, bs)):
        device = check_weight(t, f"tensors[{p}]", device).device
        _check_matrix(v, f"bases[{p}]", device)
        if v.dtype != torch.float32:
            raise TypeError(f"bases[{p}] has dtype {v.dtype}; expected float32")
        (m, n), (nv, r) = t.shape, v.shape
        if nv != n:
            raise ValueError(f"bases[{p}] has shape {tuple(v.shape)} but tensors[{p}] has shape "
                             f"{tuple(t.shape)}; expected a basis (n, r) = ({n}, r) for an (m, n) tensor")
        if r < 1:
            raise ValueError(f"bases[{p}] has shape {tuple(v.shape)}; its rank r (columns) must be at least 1")
        if m * r >= INDEX_LIMIT:
            raise ValueError(f"tensors[{p}]: m*r = {m * r} stream indices must stay below 2**63")
        spans.append(m * r)
    seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
    keys_l, offsets_l = check_keys_offsets(keys, offsets, spans)
    decay = check_finite(decay, "decay")
    seed = check_rounding(rounding, rounding_seed, seeds_l[0] if seeds_l else None,
                          "it defaults to seeds[0], and seeds is empty")
    if seed is not None:
        for p, (t, v, offset) in enumerate(zip(ts, bs, offsets_l)):
            (m, n), r = t.shape, v.shape[1]
            if offset % r:
                raise ValueError(f"offsets[{p}] = {offset} is not a multiple of r = {r}; "
                                 "rounding='stochastic' places W's rows by offsets[p] / r")
            if (offset // r + m) * n >= INDEX_LIMIT:
                raise ValueError(f"tensors[{p}]: the rounding index (offsets[{p}]/r + m)*n = "
                                 f"{(offset // r + m) * n} must stay below 2**63")
    return SubspaceArgs(ts, [v.contiguous() for v in bs], seeds_l, coeffs_l, keys_l, offsets_l,
                        decay, seed)


def check_subspace_memory(args: SubspaceArgs) -> None:
    """No tensor listed twice or overlapping another, and no basis overlapping a tensor."""
    check_disjoint([(f"tensors[{p}]", t) for p, t in enumerate(args.tensors)],
                   [(f"bases[{p}]", v) for p, v in enumerate(args.bases)])


__all__ = ["SubspaceArgs", "check_subspace_memory", "validate_subspace"]
