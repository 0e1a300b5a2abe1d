"""Front end of the low-rank op ``lowrank_perturb_``: in-place U·Z·Vᵀ perturbation.

Validation runs here, before anything is modified, into a
:class:`~pgap_kernels.args.LowrankArgs`; the backend chosen for the device then runs its
``backends/<name>/lowrank.py`` ``lowrank_update`` (see :mod:`pgap_kernels._dispatch`). It never
allocates an m x n temporary. It is the ``torch.library`` custom op ``pgap::lowrank_perturb_``,
so torch.compile traces it without a graph break; plain eager calls skip the op's dispatch.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from ._checks import (FloatOrFloats, MatrixOrMatrices, check_disjoint, check_finite,
                      check_keys_offsets, check_matrix, check_rounding, check_weight, matrix_list,
                      real_or_list)
from ._dispatch import run_backend
from ._library import define_op, plain_eager_call
from ._stream import optional_seed_from_int64, optional_seed_to_int64
from .args import LowrankArgs, lowrank_factors
from .backends import LOWRANK


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
    Ws = matrix_list(W, "W")
    Us, Zs, Vs = (matrix_list(x, name) for x, name in ((U, "U"), (Z, "Z"), (V, "V")))
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
            check_matrix(x, f"{name}{tag}", device)
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
    run_backend(LOWRANK, weights[keep[0]].device,
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
