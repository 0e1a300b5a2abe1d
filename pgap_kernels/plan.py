"""A prepared ``perturbed_many``: the tensor side checked once, then only seeds and coefficients
per call.

A ZO loop calls ``perturbed_many`` on the same tensors (sources, outs, means, keys, offsets) on
every forward; only the seeds and coefficients change. :class:`PerturbedManyPlan` runs every
check of the tensor side, including the memory-overlap check, when it is made; a call checks
its seeds and coefficients, and that each prepared tensor still has the memory it had (data
pointer, shape, dtype, contiguity), then runs the same backend call as ``perturbed_many``, so
the results are bit-identical.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ._checks import FloatOrFloats, IntOrInts, TensorList, check_seeds_coeffs
from ._library import plain_eager_context, plain_tensors
from .args import PerturbArgs
from .perturb import (_check_mean_coeff, _run, check_out_disjoint, perturbed_many_op,
                      validate_perturbed_many)

Layout = Tuple[int, torch.Size, torch.dtype, bool]


def _layouts(tensors: Sequence[torch.Tensor]) -> List[Layout]:
    """What locates each tensor's memory: data pointer, shape, dtype and contiguity. The device
    needs no entry: CUDA's unified address space gives no two devices (host included) one
    address."""
    return [(t.data_ptr(), t.shape, t.dtype, t.is_contiguous()) for t in tensors]


class StalePlanError(RuntimeError):
    """A tensor of a :class:`PerturbedManyPlan` no longer has the memory it had when the plan was
    made (resized, re-allocated, given new ``.data``, a new dtype or layout). Raised before
    anything is written; make a new plan."""


class PerturbedManyPlan:
    """:func:`pgap_kernels.perturbed_many` on fixed tensors, validated once.

    ``plan = PerturbedManyPlan(tensors, keys=..., offsets=..., mean=..., out=..., distribution=...)``
    checks everything ``perturbed_many`` checks about the tensors (dtypes, devices, shapes,
    contiguity, keys, offsets, that no ``out`` overlaps another one, a source or a mean);
    ``plan(seeds, coeffs, mean_coeff=...)`` then writes into ``plan.out`` bit for bit what
    ``perturbed_many(tensors, seeds, coeffs, keys=..., offsets=..., mean=..., mean_coeff=...,
    out=plan.out, distribution=...)`` writes, on every backend (chosen at each call, as there),
    for a fraction of the host time.

    The plan keeps references to the tensor objects it was given and reads/writes them at each
    call: update the sources in place between calls (an optimizer step), not by rebinding them.
    Before writing, a call checks that every tensor still has its data pointer, shape, dtype and
    contiguity, and raises :class:`StalePlanError` otherwise.

    Parameters
    ----------
    tensors : Tensor or iterable of Tensor
        Contiguous float32/bfloat16/float16 tensors on one device (read only at each call; a
        tensor may be listed twice).
    keys, offsets, distribution
        As for :func:`pgap_kernels.perturbed_many` (keys default to the list positions, offsets
        to 0; "gaussian" or "rademacher").
    mean : Tensor or iterable of Tensor, optional
        One tensor per entry of ``tensors``, like it (read only). Without it every call's
        ``mean_coeff`` must be 0.
    out : iterable of Tensor, optional
        One tensor per entry of ``tensors``, shaped and placed like it, contiguous, of its dtype
        or another float dtype (as for ``perturbed_many``), sharing no memory with each other,
        any source or any mean. **Mutated by every call.** Default: new tensors like the
        sources, made once (``plan.out``).

    Raises
    ------
    TypeError, ValueError
        On a bad argument, as ``perturbed_many`` would.
    """

    def __init__(self, tensors: TensorList, *, keys: Optional[Sequence[int]] = None,
                 offsets: Optional[Sequence[int]] = None, mean: Optional[TensorList] = None,
                 out: Optional[TensorList] = None, distribution: str = "gaussian") -> None:
        args = validate_perturbed_many(tensors, [], [], keys=keys, offsets=offsets, mean=mean,
                                       mean_coeff=0.0, out=out, distribution=distribution)
        check_out_disjoint(args)
        self._args = args  # seeds, coeffs and mean_coeff are filled in per call
        self._watched = args.sources + args.tensors + (args.means or [])
        self._layouts = _layouts(self._watched)
        self._plain = plain_tensors(self._watched)
        self._writes = any(t.numel() for t in args.tensors)

    @property
    def tensors(self) -> List[torch.Tensor]:
        """The sources (read at each call)."""
        return list(self._args.sources)

    @property
    def out(self) -> List[torch.Tensor]:
        """The tensors each call writes, in the order of ``tensors``."""
        return list(self._args.tensors)

    @property
    def mean(self) -> Optional[List[torch.Tensor]]:
        """The mean tensors, or None."""
        return None if self._args.means is None else list(self._args.means)

    @property
    def keys(self) -> List[int]:
        return list(self._args.keys)

    @property
    def offsets(self) -> List[int]:
        return list(self._args.offsets)

    @property
    def distribution(self) -> str:
        return self._args.distribution

    def stale(self) -> Optional[str]:
        """None when every tensor of the plan still has the memory it was prepared with, else
        which one changed and how."""
        now = _layouts(self._watched)
        if now == self._layouts:
            return None
        n, m = len(self._args.sources), len(self._args.tensors)
        for i, (was, is_) in enumerate(zip(self._layouts, now)):
            if was != is_:
                name = (f"tensors[{i}]" if i < n else f"out[{i - n}]" if i < n + m
                        else f"mean[{i - n - m}]")
                fields = ("data pointer", "shape", "dtype", "contiguity")
                changed = ", ".join(f"{f} {a} -> {b}" for f, a, b in zip(fields, was, is_) if a != b)
                return f"{name} changed since the plan was prepared ({changed})"
        return None  # unreachable: the lists differ somewhere

    def __call__(self, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                 mean_coeff: float = 0.0) -> List[torch.Tensor]:
        """Write ``tensors[p] + mean_coeff*mean[p] + sum_j coeffs[j]*z(seeds[j], keys[p],
        offsets[p] + i)`` into ``out[p]`` for every p, and return ``out``.

        ``seeds``: ints in [0, 2**64); ``coeffs``: finite numbers, one per seed (Python numbers or
        CPU tensors/arrays holding them, as for ``perturbed_many``); ``mean_coeff``: finite, 0
        when the plan has no mean. Raises TypeError/ValueError naming a bad argument, and
        :class:`StalePlanError` when a prepared tensor changed, in both cases before anything is
        written; RuntimeError if a backend forced by ``PGAP_BACKEND``/``use_backend`` cannot run.
        """
        seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
        prepared = self._args
        mean_coeff = _check_mean_coeff(mean_coeff, prepared.means is not None)
        if self._layouts != _layouts(self._watched):
            raise StalePlanError(f"{self.stale()}; make a new PerturbedManyPlan")
        outs = prepared.tensors
        if not outs:
            return []
        args = PerturbArgs(outs, prepared.means, seeds_l, coeffs_l, prepared.keys, prepared.offsets,
                           1.0, mean_coeff, sources=prepared.sources,
                           distribution=prepared.distribution)
        if self._plain and plain_eager_context():
            if self._writes:
                _run("", args)
            torch.autograd.graph.increment_version(outs)  # as the op's ADInplaceOrView does
        else:
            with torch.no_grad():
                perturbed_many_op(args)
        return list(outs)


__all__ = ["PerturbedManyPlan", "StalePlanError"]
