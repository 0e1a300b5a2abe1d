"""Public low-rank ops: in-place U·Z·Vᵀ perturbation and implicit Gaussian-sum sketches.

Validation runs here, before anything is modified; the backend chosen for the device then runs
(see :mod:`pgap_kernels._dispatch`). Neither op ever allocates an m x n temporary. Both are
``torch.library`` custom ops (``pgap::lowrank_perturb_``, ``pgap::gaussian_sketch_batch``), so
torch.compile traces them without a graph break; plain eager calls skip the op's dispatch.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from ._dispatch import run_backend
from ._library import define_op, plain_eager_call
from ._lowrank_validation import (LowrankArgs, SketchArgs, SketchProblem, check_disjoint,
                                  lowrank_factors, validate_lowrank, validate_sketch)
from ._stream import (optional_seed_from_int64, optional_seed_to_int64, seed_from_int64,
                      seed_to_int64)
from ._validation import FloatOrFloats, IntOrInts

MatrixOrMatrices = Union[torch.Tensor, Sequence[torch.Tensor]]
ProblemLike = Union[SketchProblem, Tuple[int, int], Tuple[int, int, int], Tuple[int, int, int, int]]


def _lowrank_impl(weights: List[torch.Tensor], us: List[torch.Tensor], zs: List[torch.Tensor],
                  vs: List[torch.Tensor], scales: List[float], decay: float, backend: str,
                  keys: Optional[List[int]] = None, offsets: Optional[List[int]] = None,
                  rounding_seed: Optional[int] = None) -> None:
    """Body of ``pgap::lowrank_perturb_`` on CPU and CUDA (``backend`` "" = chosen now).

    Forms the float32 factors L, R of every non-empty W, checks on the real tensors that no W is
    listed twice and no R (V itself, when it is float32 and contiguous) shares memory with a W,
    then runs the backend. ``keys`` (default the positions) and ``offsets`` (default 0) place
    the stochastic rounding, used only with a ``rounding_seed`` (an int64 bit pattern; None:
    round to nearest).
    """
    keep = [p for p, w in enumerate(weights) if w.numel() > 0]
    if not keep:
        return
    keys = list(range(len(weights))) if keys is None else keys
    offsets = [0] * len(weights) if offsets is None else offsets
    factors = [lowrank_factors(us[p], zs[p], vs[p], scales[p]) for p in keep]
    check_disjoint([(f"W[{p}]", weights[p]) for p in keep],
                   [(f"V[{p}]", right) for p, (_, right) in zip(keep, factors)])
    run_backend("lowrank", "lowrank_update", weights[keep[0]].device,
                LowrankArgs([weights[p] for p in keep], [f[0] for f in factors],
                            [f[1] for f in factors], decay, [keys[p] for p in keep],
                            [offsets[p] for p in keep], optional_seed_from_int64(rounding_seed)),
                backend=backend)


def _lowrank_fake(weights, us, zs, vs, scales, decay, backend, keys=None, offsets=None,
                  rounding_seed=None) -> None:
    return None


define_op("lowrank_perturb_", _lowrank_impl, _lowrank_fake, mutates_args=("weights",))


@torch.no_grad()
def lowrank_perturb_(W: MatrixOrMatrices, U: MatrixOrMatrices, Z: MatrixOrMatrices,
                     V: MatrixOrMatrices, scale: FloatOrFloats, *, decay: float = 1.0,
                     rounding: str = "nearest", rounding_seed: Optional[int] = None,
                     keys: Optional[Sequence[int]] = None,
                     offsets: Optional[Sequence[int]] = None) -> None:
    """In place: ``W <- decay*W + scale * U @ Z @ V.T`` for one matrix or a list of them.

    Parameters
    ----------
    W : Tensor (m, n) or sequence of them
        Contiguous float32/bfloat16/float16 weights on one device. **Mutated.**
    U, Z, V : Tensor or sequence of them (one per W)
        U (m, r), Z (r, s), V (n, s), r, s >= 1, any float dtype, same device as W (read only;
        need not be contiguous).
    scale : float or sequence of float (one per W); numbers as for :func:`perturb_`'s coeffs
        (0-d/one-element CPU tensors and numpy values are accepted)
    decay : float
        Multiplies the old W; ``decay == 0`` overwrites W without reading it, as does any
        decay that is 0 in float32 (``|decay| <= 2**-150``, e.g. 1e-50).
    rounding : "nearest" or "stochastic"
        How the float32 result is rounded into a bfloat16/float16 W: to nearest even (default)
        or stochastically (unbiased; docs/rng.md, "Stochastic rounding"): element (i, j) of
        ``W[p]`` uses the rounding word of element ``offsets[p] + i*n + j`` under
        (rounding_seed, ``keys[p]``). float32 W are unaffected.
    rounding_seed : int in [0, 2**64), required when ``rounding="stochastic"``
        Give each pass its own (this op has no stream seed to default to).
    keys : sequence of int in [0, 2**32), optional
        Rounding key per W (default the list positions); only stochastic rounding reads them.
    offsets : sequence of int >= 0, optional
        Element index of W[p]'s element 0 in the logical full matrix (default 0; a row shard
        starting at row i0 passes i0*n and rounds as those rows of the whole matrix);
        ``offsets[p] + m*n < 2**63``. Only stochastic rounding reads them.

    Accumulation is float32 with one rounding to W's dtype. ``scale * U @ Z`` (or ``V @ Z.T``,
    whichever inner size min(r, s) is smaller) is formed first in float32, an O((m + n) min(r, s))
    temporary; the m x n product is never materialized: the backends apply it tile by tile
    (native: blocked OpenMP loop; cuda/triton: a tiled GEMM whose epilogue updates W in place).

    Raises
    ------
    TypeError, ValueError
        On a bad argument (shape mismatch, dtype, device, non-contiguous W, a matrix listed
        twice), before any tensor is modified.
    """
    call = validate_lowrank(W, U, Z, V, scale, decay, keys=keys, offsets=offsets,
                            rounding=rounding, rounding_seed=rounding_seed)
    Ws, Us, Zs, Vs = call.Ws, call.Us, call.Zs, call.Vs
    if not any(w.numel() for w in Ws):
        return
    rseed = optional_seed_to_int64(call.rounding_seed)
    if plain_eager_call(Ws + Us + Zs + Vs):
        _lowrank_impl(Ws, Us, Zs, Vs, call.scales, call.decay, "", call.keys, call.offsets, rseed)
        torch.autograd.graph.increment_version(Ws)  # as the op's ADInplaceOrView does
        return
    torch.ops.pgap.lowrank_perturb_(Ws, Us, Zs, Vs, call.scales, call.decay, "", call.keys,
                                    call.offsets, rseed)


def _sketch_impl(ms: List[int], ns: List[int], keys: List[int], offsets: List[int],
                 seeds: List[int], coeffs: List[float], omegas: List[torch.Tensor], transpose: bool,
                 backend: str) -> List[torch.Tensor]:
    """Body of ``pgap::gaussian_sketch_batch`` on CPU and CUDA (seeds as int64 bit patterns,
    omegas contiguous float32 on one device, at least one problem)."""
    problems = [SketchProblem(*p) for p in zip(ms, ns, keys, offsets)]
    args = SketchArgs(problems, [seed_from_int64(s) for s in seeds], list(coeffs), list(omegas),
                      transpose)
    return run_backend("sketch", "gaussian_sketch", omegas[0].device, args, backend=backend)


def _sketch_fake(ms, ns, keys, offsets, seeds, coeffs, omegas, transpose, backend) -> List[torch.Tensor]:
    return [om.new_empty((n if transpose else m, om.shape[1]), dtype=torch.float32)
            for m, n, om in zip(ms, ns, omegas)]


define_op("gaussian_sketch_batch", _sketch_impl, _sketch_fake)


@torch.no_grad()
def gaussian_sketch_batch(problems: Sequence[ProblemLike], seeds: IntOrInts, coeffs: FloatOrFloats,
                          omegas: Sequence[torch.Tensor], *, transpose: bool = False
                          ) -> List[torch.Tensor]:
    """:func:`gaussian_sketch` for many problems sharing seeds and coefficients.

    Parameters
    ----------
    problems : sequence of (m, n[, key[, offset]]) or :class:`SketchProblem`
    seeds, coeffs : as for :func:`gaussian_sketch`
    omegas : sequence of Tensor, one per problem, all on one device
        (n_p, q_p), or (m_p, q_p) when ``transpose``.

    Returns
    -------
    list of float32 Tensor, (m_p, q_p) or (n_p, q_p), on the omegas' device.
    """
    args = validate_sketch(problems, seeds, coeffs, omegas, transpose)
    if not args.problems:
        return []
    columns = [list(c) for c in zip(*args.problems)]  # ms, ns, keys, offsets
    if plain_eager_call(args.omegas):
        return _sketch_impl(*columns, args.seeds, args.coeffs, args.omegas, transpose, "")
    return torch.ops.pgap.gaussian_sketch_batch(*columns, [seed_to_int64(s) for s in args.seeds],
                                                args.coeffs, args.omegas, transpose, "")


def gaussian_sketch(m: int, n: int, seeds: IntOrInts, coeffs: FloatOrFloats, omega: torch.Tensor, *,
                    key: int = 0, offset: int = 0, transpose: bool = False) -> torch.Tensor:
    """``A @ omega`` (or ``A.T @ omega``) for the implicit m x n Gaussian sum A.

    ``A[a, b] = sum_j coeffs[j] * xi(seeds[j], key, offset + a*n + b)``: exactly the matrix that
    ``perturb_(W, seeds, coeffs, keys=[key], offsets=[offset], decay=0)`` writes into a
    contiguous m x n tensor W. Its tiles are generated inside the kernel: memory is
    O((m + n) q), never m x n.

    Parameters
    ----------
    m, n : int >= 0
    seeds : int or sequence of int in [0, 2**64)
    coeffs : float or sequence of float, one per seed (numbers as for :func:`perturb_`)
    omega : Tensor (n, q), or (m, q) when ``transpose``; float32/bfloat16/float16, any device
        (read as float32).
    key : int in [0, 2**32)
    offset : int >= 0, with offset + m*n < 2**63
    transpose : bool

    Returns
    -------
    float32 Tensor (m, q), or (n, q) when ``transpose``, on omega's device.
    """
    return gaussian_sketch_batch([(m, n, key, offset)], seeds, coeffs, [omega], transpose=transpose)[0]
