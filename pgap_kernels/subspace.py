"""Public op ``subspace_perturb_``: seeded perturbations that live in a column subspace.

``W_p <- decay*W_p + (sum_j c_j Xi(s_j, key_p)) @ V_p.T`` with Xi an m x r matrix of the random
stream and V_p an n x r float32 basis: the perturbation of a matrix restricted to the span of
V's columns, generated inside the kernel, never stored m x n (docs/subspace.md).

Validation runs here, before anything is modified, into a
:class:`~pgap_kernels.args.SubspaceArgs`; the backend chosen for the device then runs its
``backends/<name>/subspace.py`` ``subspace_update`` (see :mod:`pgap_kernels._dispatch`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ._checks import (FloatOrFloats, IntOrInts, MatrixOrMatrices, check_disjoint, check_finite,
                      check_keys_offsets, check_matrix, check_rounding, check_seeds_coeffs,
                      check_weight, matrix_list)
from ._dispatch import run_backend
from ._library import define_op, plain_eager_call
from ._stream import (INDEX_LIMIT, optional_seed_from_int64, optional_seed_to_int64,
                      seed_from_int64, seed_to_int64)
from .args import SubspaceArgs
from .backends import SUBSPACE


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
    ts = matrix_list(tensors, "tensors")
    if single and not isinstance(bases, torch.Tensor):
        raise TypeError("tensors is a single tensor, so bases must be a single tensor too")
    bs = matrix_list(bases, "bases")
    if len(bs) != len(ts):
        raise ValueError(f"bases has {len(bs)} matrices but tensors has {len(ts)}")
    device = None
    spans = []
    for p, (t, v) in enumerate(zip(ts, bs)):
        device = check_weight(t, f"tensors[{p}]", device).device
        check_matrix(v, f"bases[{p}]", device)
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



def _run(backend: str, args: SubspaceArgs) -> None:
    """Check memory overlaps on the real tensors, then run ``backend`` ("" = chosen now)."""
    check_subspace_memory(args)
    args = args.nonempty()
    if args.tensors:
        run_backend(SUBSPACE, args.tensors[0].device, args, backend=backend)


def _subspace_impl(tensors: List[torch.Tensor], bases: List[torch.Tensor], seeds: List[int],
                   coeffs: List[float], keys: List[int], offsets: List[int], decay: float,
                   backend: str, rounding_seed: Optional[int] = None) -> None:
    """Body of ``pgap::subspace_perturb_`` on CPU and CUDA (seeds and ``rounding_seed``, None
    for round to nearest, as int64 bit patterns; ``backend`` "" for the automatic/forced
    choice)."""
    _run(backend, SubspaceArgs(list(tensors), list(bases), [seed_from_int64(s) for s in seeds],
                               list(coeffs), list(keys), list(offsets), decay,
                               optional_seed_from_int64(rounding_seed)))


def _subspace_fake(tensors, bases, seeds, coeffs, keys, offsets, decay, backend,
                   rounding_seed=None) -> None:
    return None


define_op("subspace_perturb_", _subspace_impl, _subspace_fake, mutates_args=("tensors",))


@torch.no_grad()
def subspace_perturb_(tensors: MatrixOrMatrices, bases: MatrixOrMatrices, seeds: IntOrInts,
                      coeffs: FloatOrFloats, *, keys: Optional[Sequence[int]] = None,
                      offsets: Optional[Sequence[int]] = None, decay: float = 1.0,
                      rounding: str = "nearest", rounding_seed: Optional[int] = None) -> None:
    """In place, for every matrix ``W_p`` (m_p x n_p) with basis ``V_p`` (n_p x r_p)::

        W_p <- decay*W_p + sum_j coeffs[j] * Xi(seeds[j], keys[p]) @ V_p.T
        Xi(s, key)[i, k] = xi(s, key, offsets[p] + i*r_p + k)        (m_p x r_p, row-major)

    with ``xi`` the philox4x32-10/v1 stream (docs/rng.md). A row shard of a matrix that starts
    at row i0 passes ``offsets[p] = i0*r_p`` and gets exactly its rows of the unsharded result.
    Accumulation is float32 with one rounding to W's dtype; one launch for all matrices of a
    dtype and all seeds; no m x n temporary (on a GPU, Xi never leaves the chip).

    Parameters
    ----------
    tensors : Tensor (m, n) or sequence of them
        Contiguous float32/bfloat16/float16 matrices on one device. **Mutated.** Matrices with
        m or n = 0 are left as they are.
    bases : Tensor (n, r) or sequence of them, one per matrix
        float32, r >= 1, on the matrices' device, any strides (read only; made contiguous, a
        copy of n x r floats, where they are not). Must not share memory with a matrix.
    seeds : int or sequence of int in [0, 2**64)
    coeffs : float or sequence of float, one finite coefficient per seed (numbers as for
        :func:`perturb_`: 0-d/one-element CPU tensors and numpy values are accepted)
    keys : sequence of int in [0, 2**32), optional
        Stream key per matrix; default the list positions 0, 1, ..., as for ``perturb_``.
    offsets : sequence of int >= 0, optional
        Stream index of Xi[0, 0] per matrix (default 0); ``offsets[p] + m_p*r_p < 2**63``.
    decay : float
        Multiplies the old W; ``decay == 0`` overwrites W without reading it, as does any
        decay that is 0 in float32 (``|decay| <= 2**-150``, e.g. 1e-50).
    rounding : "nearest" or "stochastic"
        How the float32 result is rounded into a bfloat16/float16 W: to nearest even (default)
        or stochastically (unbiased; docs/rng.md, "Stochastic rounding"): W_p[i, j] uses the
        rounding word of element ``(offsets[p]/r_p + i)*n_p + j`` under (rounding_seed,
        ``keys[p]``), so a row shard rounds as those rows of the whole matrix (stochastic
        rounding needs ``offsets[p] % r_p == 0``). float32 W are unaffected.
    rounding_seed : int in [0, 2**64), optional
        Seed of the rounding bits; default ``seeds[0]``. Give each pass with the same seeds
        its own rounding_seed.

    Raises
    ------
    TypeError, ValueError
        On a bad argument (shape, dtype, device, non-contiguous matrix, a matrix listed twice
        or overlapping another or a basis, ranges of seeds/keys/offsets, non-finite numbers),
        before any matrix is modified.
    """
    args = validate_subspace(tensors, bases, seeds, coeffs, keys=keys, offsets=offsets, decay=decay,
                             rounding=rounding, rounding_seed=rounding_seed)
    if not any(t.numel() for t in args.tensors):
        return
    if plain_eager_call(args.tensors + args.bases):
        _run("", args)
        torch.autograd.graph.increment_version(args.tensors)  # as the op's ADInplaceOrView does
        return
    torch.ops.pgap.subspace_perturb_(args.tensors, args.bases, [seed_to_int64(s) for s in args.seeds],
                                     args.coeffs, args.keys, args.offsets, args.decay, "",
                                     optional_seed_to_int64(args.rounding_seed))
