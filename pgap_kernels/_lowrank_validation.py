"""Argument checks and normalized arguments of the low-rank ops, run before anything is touched.

Every backend receives the same normalized arguments:

* :class:`LowrankArgs` for ``W <- decay*W + L @ R.T`` (L, R float32, contiguous; the public
  ``lowrank_perturb_`` folds ``scale`` and ``Z`` into them, see :func:`lowrank_factors`);
* :class:`SketchArgs` for ``A @ omega`` / ``A.T @ omega`` with A a seeded Gaussian sum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from ._precision import ieee_float32
from ._stream import INDEX_LIMIT, KEY_LIMIT
from ._validation import (FloatOrFloats, IntOrInts, _as_list, check_finite, check_float_dtype,
                          check_int, check_keys_offsets, check_rounding, check_seeds_coeffs,
                          real_or_list)


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


def _matrix_list(value, name: str) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return _as_list(value, name)


def _check_matrix(t, name: str, device: Optional[torch.device]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_float_dtype(t.dtype, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the weights are on {device}; "
                         "all tensors must share one device")
    return t


def check_weight(t, name: str, device: Optional[torch.device]) -> torch.Tensor:
    """A matrix that an op writes in place: :func:`_check_matrix` and contiguous."""
    _check_matrix(t, name, device)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() on a copy)")
    return t


def _span(t: torch.Tensor) -> Tuple[int, int]:
    """[first, last) byte addresses a (possibly strided, non-empty) tensor can touch."""
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def check_disjoint(written: Sequence[Tuple[str, torch.Tensor]],
                   read: Sequence[Tuple[str, torch.Tensor]] = ()) -> None:
    """Raise ValueError if two written tensors, or a read and a written one, share memory.

    Run on real tensors (it reads data pointers) before anything is modified: a tensor written
    twice, or read while it is written, would race inside one kernel launch. Read-only tensors
    may share memory with each other. Empty tensors are ignored.
    """
    spans = sorted([(_span(t), name, True) for name, t in written if t.numel()]
                   + [(_span(t), name, False) for name, t in read if t.numel()])
    # The span reaching furthest so far among the written ones, and among the read ones: a span
    # overlaps an earlier one of a kind iff it starts before that furthest end.
    furthest = {True: None, False: None}
    for (lo, hi), name, writes in spans:
        for kind in (True, False) if writes else (True,):
            rival = furthest[kind]
            if rival is not None and lo < rival[0][1]:
                if kind and writes and rival[0] == (lo, hi):
                    raise ValueError(f"{name} and {rival[1]} are the same tensor, which appears "
                                     "twice; each tensor may be updated once per call")
                raise ValueError(f"{name} overlaps {rival[1]} in memory, and the call writes "
                                 "one of them; pass tensors that do not share storage")
        if furthest[writes] is None or hi > furthest[writes][0][1]:
            furthest[writes] = ((lo, hi), name)


class LowrankCall(NamedTuple):
    """The checked arguments of ``lowrank_perturb_``, as lists (one entry per W)."""

    Ws: List[torch.Tensor]
    Us: List[torch.Tensor]
    Zs: List[torch.Tensor]
    Vs: List[torch.Tensor]
    scales: List[float]
    decay: float
    keys: List[int]
    offsets: List[int]
    rounding_seed: Optional[int]


def validate_lowrank(W, U, Z, V, scale: FloatOrFloats, decay: float, *,
                     keys: Optional[Sequence[int]] = None, offsets: Optional[Sequence[int]] = None,
                     rounding: str = "nearest", rounding_seed: Optional[int] = None) -> LowrankCall:
    """Check the arguments of ``lowrank_perturb_``; return them as lists (scale per matrix).

    W: (m, n) contiguous, U: (m, r), Z: (r, s), V: (n, s), r, s >= 1, float dtypes, one device;
    keys in [0, 2**32) (default the positions), offsets (rounding index of W's element 0) in
    [0, 2**63 - m*n) (default 0); rounding_seed required for stochastic rounding.
    Memory overlaps (a W listed twice) need data pointers: :func:`check_disjoint`, run by the op
    on the real tensors.
    """
    single = isinstance(W, torch.Tensor)
    Ws = _matrix_list(W, "W")
    Us, Zs, Vs = (_matrix_list(x, name) for x, name in ((U, "U"), (Z, "Z"), (V, "V")))
    if single and not all(isinstance(x, torch.Tensor) for x in (U, Z, V)):
        raise TypeError("W is a single tensor, so U, Z and V must be single tensors too")
    for name, lst in (("U", Us), ("Z", Zs), ("V", Vs)):
        if len(lst) != len(Ws):
            raise ValueError(f"{name} has {len(lst)} matrices but W has {len(Ws)}")
    scales = real_or_list(scale, "scale")
    if len(scales) == 1 and len(Ws) != 1:
        scales = scales * len(Ws)
    if len(scales) != len(Ws):
        raise ValueError(f"scale has {len(scales)} entries but W has {len(Ws)} matrices")
    scales = [check_finite(c, f"scale[{p}]") for p, c in enumerate(scales)]
    decay = check_finite(decay, "decay")
    device = None
    for p, (w, u, z, v) in enumerate(zip(Ws, Us, Zs, Vs)):
        tag = "" if single else f"[{p}]"
        device = check_weight(w, f"W{tag}", device).device
        for x, name in ((u, "U"), (z, "Z"), (v, "V")):
            _check_matrix(x, f"{name}{tag}", device)
        (m, n), (mu, r), (rz, s), (nv, sv) = w.shape, u.shape, z.shape, v.shape
        if mu != m or nv != n or rz != r or sv != s:
            raise ValueError(f"shape mismatch at position {p}: W {tuple(w.shape)}, U {tuple(u.shape)}, "
                             f"Z {tuple(z.shape)}, V {tuple(v.shape)}; expected W (m, n), U (m, r), "
                             "Z (r, s), V (n, s)")
        if r < 1 or s < 1:
            raise ValueError(f"Z{tag} has shape {(r, s)}; the ranks r and s must be at least 1")
    keys_l, offsets_l = check_keys_offsets(keys, offsets, [w.numel() for w in Ws], what="W")
    seed = check_rounding(rounding, rounding_seed, None, "lowrank_perturb_ has no seeds to default to")
    return LowrankCall(Ws, Us, Zs, Vs, scales, decay, keys_l, offsets_l, seed)


def lowrank_factors(u: torch.Tensor, z: torch.Tensor, v: torch.Tensor, scale: float
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 (L, R) with ``L @ R.T == scale * U @ Z @ V.T``, inner size k = min(r, s).

    Memory O((m + n) k), never m x n. Shared by every backend, so they all see the same L, R.
    """
    uf, zf, vf = u.float(), z.float(), v.float()
    with ieee_float32():  # float32 whatever the user's TF32 / matmul-precision setting
        if z.shape[1] <= z.shape[0]:  # s <= r: L = scale*U@Z (m, s), R = V (n, s)
            return (torch.mm(uf, zf) * scale).contiguous(), vf.contiguous()
        return (uf * scale).contiguous(), torch.mm(vf, zf.t()).contiguous()  # k = r


def check_problem(problem, name: str) -> SketchProblem:
    """A :class:`SketchProblem` from a 2-, 3- or 4-tuple (m, n[, key[, offset]])."""
    if isinstance(problem, (str, bytes)) or not isinstance(problem, Sequence) or not 2 <= len(problem) <= 4:
        raise TypeError(f"{name} must be a tuple (m, n[, key[, offset]]), got {problem!r}")
    m = check_int(problem[0], f"{name}.m", 0, INDEX_LIMIT)
    n = check_int(problem[1], f"{name}.n", 0, INDEX_LIMIT)
    key = check_int(problem[2] if len(problem) > 2 else 0, f"{name}.key", 0, KEY_LIMIT)
    if m * n >= INDEX_LIMIT:
        raise ValueError(f"{name}: m*n = {m * n} must stay below 2**63")
    offset = check_int(problem[3] if len(problem) > 3 else 0, f"{name}.offset", 0, INDEX_LIMIT - m * n)
    return SketchProblem(m, n, key, offset)


def validate_sketch(problems, seeds: IntOrInts, coeffs: FloatOrFloats, omegas,
                    transpose: bool) -> SketchArgs:
    """Check the arguments of the sketch ops; omegas become contiguous float32 copies if needed."""
    problems = [check_problem(p, f"problems[{i}]") for i, p in enumerate(_as_list(problems, "problems"))]
    seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
    omegas = _matrix_list(omegas, "omegas")
    if len(omegas) != len(problems):
        raise ValueError(f"omegas has {len(omegas)} matrices but problems has {len(problems)}")
    if not isinstance(transpose, bool):
        raise TypeError(f"transpose must be a bool, got {type(transpose).__name__}")
    device = omegas[0].device if omegas else None
    out = []
    for i, (prob, om) in enumerate(zip(problems, omegas)):
        _check_matrix(om, f"omega[{i}]" if len(omegas) > 1 else "omega", device)
        rows = prob.m if transpose else prob.n
        if om.shape[0] != rows:
            what = "m (transpose=True)" if transpose else "n"
            raise ValueError(f"omega{'' if len(omegas) == 1 else f'[{i}]'} has {om.shape[0]} rows; "
                             f"expected {what} = {rows} for a {prob.m} x {prob.n} sum")
        out.append(om.float().contiguous())
    return SketchArgs(problems, seeds_l, coeffs_l, out, transpose)


__all__ = ["LowrankArgs", "LowrankCall", "SketchArgs", "SketchProblem", "check_disjoint", "check_problem",
           "check_weight", "lowrank_factors",
           "validate_lowrank", "validate_sketch"]
