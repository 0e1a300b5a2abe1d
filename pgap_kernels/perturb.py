"""Front end of the seeded perturbation op: ``perturb_``, ``perturbed``, ``perturbed_many``,
``gaussian`` and ``rademacher``, registered once as ``torch.library`` custom ops (namespace pgap).

Validation runs here (with the shared checks of :mod:`pgap_kernels._checks`), before any tensor
is modified, into a :class:`~pgap_kernels.args.PerturbArgs`; the custom op then runs the
backend chosen for the tensors' device (see :mod:`pgap_kernels._dispatch`), whose
``backends/<name>/perturb.py`` implements ``perturb_group``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from ._checks import (DeviceLike, FloatOrFloats, IntOrInts, TensorList, as_device, as_list,
                      check_disjoint, check_finite, check_float_dtype, check_int,
                      check_keys_offsets, check_like, check_rounding, check_seeds_coeffs,
                      check_tensor, check_tensors)
from ._dispatch import run_backend
from ._library import define_op, plain_eager_call
from ._stream import (DISTRIBUTIONS, INDEX_LIMIT, KEY_LIMIT, optional_seed_from_int64,
                      optional_seed_to_int64, seed_from_int64, seed_to_int64)
from .args import PerturbArgs
from .backends import PERTURB

ShapeLike = Union[int, Sequence[int], torch.Size]


# -- argument checks (shared ones in _checks) --------------------------------------------------

def _check_means(mean, tensors: List[torch.Tensor]) -> Optional[List[torch.Tensor]]:
    if mean is None:
        return None
    if isinstance(mean, torch.Tensor):
        mean = [mean]
    mean = as_list(mean, "mean")
    if len(mean) != len(tensors):
        raise ValueError(f"mean has {len(mean)} tensors but tensors has {len(tensors)}")
    for p, (m, t) in enumerate(zip(mean, tensors)):
        check_like(m, t, f"mean[{p}]", f"tensors[{p}]")
    return mean


def _check_mean_coeff(mean_coeff: float, has_mean: bool) -> float:
    mean_coeff = check_finite(mean_coeff, "mean_coeff")
    if not has_mean and mean_coeff != 0.0:
        raise ValueError("mean_coeff is nonzero but mean is None; pass mean=... or mean_coeff=0")
    return mean_coeff


def check_distribution(distribution: str) -> str:
    """``distribution`` itself when it names a stream ("gaussian" or "rademacher"), else
    ValueError naming the argument."""
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}; "
                         f"got {distribution!r}")
    return distribution


def _check_stream_terms(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats,
                        keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                        mean: Optional[TensorList], mean_coeff: float, decay: float,
                        distribution: str) -> PerturbArgs:
    """The arguments ``perturb_`` and ``perturbed_many`` share, checked, as one pass over
    ``tensors`` (round to nearest, in place until the caller sets ``sources``)."""
    distribution = check_distribution(distribution)
    tensors = check_tensors(tensors)
    seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
    keys_l, offsets_l = check_keys_offsets(keys, offsets, [t.numel() for t in tensors])
    decay = check_finite(decay, "decay")
    means = _check_means(mean, tensors)
    mean_coeff = _check_mean_coeff(mean_coeff, means is not None)
    return PerturbArgs(tensors, means, seeds_l, coeffs_l, keys_l, offsets_l, decay, mean_coeff,
                       distribution=distribution)


def validate_perturb(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                     keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                     decay: float, mean: Optional[TensorList], mean_coeff: float,
                     rounding: str = "nearest", rounding_seed: Optional[int] = None,
                     distribution: str = "gaussian") -> PerturbArgs:
    """Check every argument of ``perturb_``; raise TypeError/ValueError naming the culprit."""
    args = _check_stream_terms(tensors, seeds, coeffs, keys, offsets, mean, mean_coeff, decay,
                               distribution)
    args.rounding_seed = check_rounding(rounding, rounding_seed, args.seeds[0] if args.seeds else None,
                                        "it defaults to seeds[0], and seeds is empty")
    return args


def validate_perturbed_many(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                            keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                            mean: Optional[TensorList], mean_coeff: float,
                            out: Optional[TensorList], distribution: str = "gaussian",
                            out_minus: Optional[TensorList] = None) -> PerturbArgs:
    """Check every argument of ``perturbed_many``; raise TypeError/ValueError naming the culprit.

    Returns one out-of-place pass (decay 1) from ``tensors`` (the sources, read only) into
    ``out`` (new tensors like them when None; each may have another float dtype than its source),
    and into ``out_minus`` (when given, each like ``out[p]``) the pass with the mean and stream
    coefficients negated. Overlaps are checked by the op on the real tensors.
    """
    args = _check_stream_terms(tensors, seeds, coeffs, keys, offsets, mean, mean_coeff, 1.0,
                               distribution)
    sources = args.tensors
    if out is None:
        outs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in sources]
    else:
        outs = as_list([out] if isinstance(out, torch.Tensor) else out, "out")
        if len(outs) != len(sources):
            raise ValueError(f"out has {len(outs)} tensors but tensors has {len(sources)}")
        for p, (o, t) in enumerate(zip(outs, sources)):
            check_like(o, t, f"out[{p}]", f"tensors[{p}]", any_float=True)
    if out_minus is not None:
        minus = as_list([out_minus] if isinstance(out_minus, torch.Tensor) else out_minus, "out_minus")
        if len(minus) != len(sources):
            raise ValueError(f"out_minus has {len(minus)} tensors but tensors has {len(sources)}")
        for p, (o, t) in enumerate(zip(minus, outs)):
            check_like(o, t, f"out_minus[{p}]", f"out[{p}]")
        args.minus = minus
    args.tensors, args.sources = outs, sources
    return args


def validate_perturbed(tensor: torch.Tensor, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                       key: int, offset: int, mean: Optional[torch.Tensor], mean_coeff: float,
                       out: Optional[torch.Tensor], distribution: str = "gaussian") -> PerturbArgs:
    """Check every argument of ``perturbed``; raise TypeError/ValueError naming the culprit.

    Returns the arguments of one out-of-place pass (decay 1) from ``tensor`` into ``out`` (of any
    float dtype), a new tensor like ``tensor`` when None. Memory overlaps need data pointers: the op checks them on
    the real tensors (:func:`pgap_kernels._checks.check_disjoint`), still before
    anything is written.
    """
    distribution = check_distribution(distribution)
    tensor = check_tensor(tensor, "tensor")
    seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
    key = check_int(key, "key", 0, KEY_LIMIT)
    offset = check_int(offset, "offset", 0, INDEX_LIMIT - tensor.numel())
    if mean is not None:
        check_like(mean, tensor, "mean", "tensor")
    mean_coeff = _check_mean_coeff(mean_coeff, mean is not None)
    if out is None:
        out = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    else:
        check_like(out, tensor, "out", "tensor", any_float=True)
    return PerturbArgs([out], None if mean is None else [mean], seeds_l, coeffs_l, [key], [offset],
                       1.0, mean_coeff, sources=[tensor], distribution=distribution)


# -- the ops -----------------------------------------------------------------------------------


def _run(backend: str, args: PerturbArgs) -> None:
    """Run ``backend`` ("" = the one chosen for the tensors' device now) on valid arguments."""
    run_backend(PERTURB, args.tensors[0].device, args, backend=backend)


def _run_perturb(backend: str, args: PerturbArgs) -> None:
    """Check on the real tensors that no written tensor shares memory with another one or with a
    ``mean`` (one launch would race on it, while ``reference`` applies the updates in order),
    then run ``backend`` on the in-place pass of ``args``."""
    check_disjoint([(f"tensors[{p}]", t) for p, t in enumerate(args.tensors)],
                   [(f"mean[{p}]", m) for p, m in enumerate(args.means or [])])
    _run(backend, args)


def _perturb_impl(tensors: List[torch.Tensor], means: List[torch.Tensor],
                  seeds: List[int], coeffs: List[float], keys: List[int], offsets: List[int],
                  decay: float, mean_coeff: float, backend: str,
                  rounding_seed: Optional[int] = None, distribution: str = "gaussian") -> None:
    """Body of ``pgap::perturb_`` on CPU and CUDA.

    ``means`` is empty when there is no mean term; seeds and ``rounding_seed`` (None: round to
    nearest) are int64 bit patterns; ``backend`` names a backend or is "" for the
    automatic/forced choice, made when the op runs (so it is not baked into torch.compile graphs).
    """
    _run_perturb(backend, PerturbArgs(list(tensors), list(means) if means else None,
                              [seed_from_int64(s) for s in seeds], list(coeffs), list(keys),
                              list(offsets), decay, mean_coeff,
                              rounding_seed=optional_seed_from_int64(rounding_seed),
                              distribution=check_distribution(distribution)))


def _perturb_fake(tensors, means, seeds, coeffs, keys, offsets, decay, mean_coeff, backend,
                  rounding_seed=None, distribution="gaussian") -> None:
    check_distribution(distribution)
    return None


define_op("perturb_", _perturb_impl, _perturb_fake, mutates_args=("tensors",))


def perturb_(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats, *,
             keys: Optional[Sequence[int]] = None, offsets: Optional[Sequence[int]] = None,
             decay: float = 1.0, mean: Optional[TensorList] = None,
             mean_coeff: float = 0.0, rounding: str = "nearest",
             rounding_seed: Optional[int] = None, distribution: str = "gaussian") -> None:
    """Fused seeded perturbation of many tensors, in place.

    For every tensor ``t`` at list position ``p`` and element ``i`` (row-major)::

        t[i] <- decay*t[i] + mean_coeff*mean[p][i] + sum_j coeffs[j] * xi(seeds[j], keys[p], offsets[p] + i)

    with ``xi`` the philox4x32-10/v1 standard-normal stream (docs/rng.md), or, with
    ``distribution="rademacher"``, ``rho``, the philox4x32-10-rademacher/v1 stream of +-1 values
    (docs/rng.md, "The Rademacher stream"). Arithmetic is float32
    with one rounding to ``t.dtype``: to nearest, or stochastically (``rounding="stochastic"``,
    for bfloat16/float16 tensors; docs/rng.md, "Stochastic rounding"). One kernel launch per
    dtype group (all tensors share one device).

    Parameters
    ----------
    tensors : Tensor or iterable of Tensor (e.g. ``model.parameters()``)
        Contiguous float32/bfloat16/float16 tensors on one device, any shapes, sharing no
        memory with each other (a tensor listed twice is an error). **Mutated.**
    seeds : int or sequence of int
        Stream seeds in [0, 2**64). Several seeds add several directions in one pass.
    coeffs : float or sequence of float
        Finite coefficients, one per seed. A number may also be a 0-d/one-element CPU tensor
        or numpy array (a 1-D CPU tensor is a sequence); a tensor on a GPU is refused, pass
        ``g.item()`` (the host synchronization stays visible in the caller's code).
    keys : sequence of int, optional
        Per-tensor stream keys in [0, 2**32); default ``0, 1, ..., len(tensors)-1``.
    offsets : sequence of int, optional
        Per-tensor stream index of element 0 (for shards of a larger tensor); default 0.
        ``offsets[p] + tensors[p].numel()`` must stay below 2**63.
    decay : float
        Multiplies the old value; ``decay == 0`` overwrites ``t`` without reading it, as does
        any decay that is 0 in float32 (``|decay| <= 2**-150``, e.g. 1e-50).
    mean : Tensor or iterable of Tensor, optional
        Tensors shaped, typed and placed like ``tensors`` (read only), sharing no memory with
        any of ``tensors``.
    mean_coeff : float
        Coefficient of ``mean``; must be 0 when ``mean`` is None.
    rounding : "nearest" or "stochastic"
        How the float32 result is rounded into a bfloat16/float16 tensor: to nearest even
        (default), or stochastically, up with probability equal to the distance from the lower
        neighbour in ulps (unbiased: E[result] = float32 result), with the 16-bit rounding
        word of element ``offsets[p] + i`` under key ``keys[p]`` (a SplitMix64 hash,
        ROUNDING_VERSION, docs/rng.md), so shards and replicas round alike. float32 tensors are
        unaffected.
    rounding_seed : int in [0, 2**64), optional
        Seed of the rounding bits; default ``seeds[0]``. A caller that applies several passes
        with the same seed (e.g. MeZO's three) should give each its own rounding_seed, or the
        passes reuse the same bits.
    distribution : "gaussian" or "rademacher"
        The stream of the seeded terms: standard normal ``xi`` (default), or Rademacher ``rho``,
        +1 or -1 with probability 1/2 each (E[rho] = 0, E[rho rho^T] = I, like ``xi``), one
        Philox block per 128 elements instead of per 4 and no transcendental functions, so the
        pass costs little more than its memory traffic. Its results are bit-identical on every
        backend. The stochastic-rounding words are the same for both.

    Raises
    ------
    TypeError, ValueError
        On a bad argument, before any tensor is modified.
    RuntimeError
        If a backend forced by ``PGAP_BACKEND``/:func:`use_backend` cannot run.
    """
    args = validate_perturb(tensors, seeds, coeffs, keys=keys, offsets=offsets, decay=decay,
                            mean=mean, mean_coeff=mean_coeff, rounding=rounding,
                            rounding_seed=rounding_seed, distribution=distribution)
    if not any(t.numel() for t in args.tensors):
        return
    if plain_eager_call(args.tensors + (args.means or [])):
        _run_perturb("", args)
        torch.autograd.graph.increment_version(args.tensors)  # as the op's ADInplaceOrView does
        return
    torch.ops.pgap.perturb_(args.tensors, args.means or [], [seed_to_int64(s) for s in args.seeds],
                            args.coeffs, args.keys, args.offsets, args.decay, args.mean_coeff, "",
                            optional_seed_to_int64(args.rounding_seed), args.distribution)


def _run_perturbed(backend: str, args: PerturbArgs, indexed: bool = False) -> None:
    """Check on the real tensors that no ``out`` shares memory with another one, a source or a
    mean, then run ``backend`` ("" = chosen now) on the out-of-place pass of ``args``. Messages
    name ``out``/``tensor``/``mean`` (``perturbed``), or ``out[p]``/``tensors[p]``/``mean[p]``
    when ``indexed`` (``perturbed_many``)."""
    check_out_disjoint(args, indexed)
    if any(t.numel() for t in args.tensors):
        _run(backend, args)


def check_out_disjoint(args: PerturbArgs, indexed: bool = True) -> None:
    """ValueError if an ``out`` (``args.tensors``) or ``out_minus`` shares memory with another
    one, a source or a mean (read from the real tensors' data pointers); names as for
    :func:`_run_perturbed`."""
    def named(name: str, tensors: Sequence[torch.Tensor]):
        return [(f"{name}[{p}]" if indexed else name, t) for p, t in enumerate(tensors)]

    check_disjoint(named("out", args.tensors) + named("out_minus", args.minus or []),
                   named("tensors" if indexed else "tensor", args.sources) + named("mean", args.means or []))


def _perturbed_impl(tensor: torch.Tensor, mean: Optional[torch.Tensor], seeds: List[int],
                    coeffs: List[float], key: int, offset: int, mean_coeff: float,
                    out: torch.Tensor, backend: str, distribution: str = "gaussian") -> None:
    """Body of ``pgap::perturbed_into`` on CPU and CUDA: ``out`` <- ``tensor`` + the stream terms
    (seeds as int64 bit patterns; ``backend`` "" for the automatic/forced choice)."""
    _run_perturbed(backend, PerturbArgs([out], None if mean is None else [mean],
                                        [seed_from_int64(s) for s in seeds], list(coeffs), [key],
                                        [offset], 1.0, mean_coeff, sources=[tensor],
                                        distribution=check_distribution(distribution)))


def _perturbed_fake(tensor, mean, seeds, coeffs, key, offset, mean_coeff, out, backend,
                    distribution="gaussian") -> None:
    check_distribution(distribution)
    return None


define_op("perturbed_into", _perturbed_impl, _perturbed_fake, mutates_args=("out",))


@torch.no_grad()
def perturbed(tensor: torch.Tensor, seeds: IntOrInts, coeffs: FloatOrFloats, *, key: int = 0,
              offset: int = 0, mean: Optional[torch.Tensor] = None, mean_coeff: float = 0.0,
              out: Optional[torch.Tensor] = None, distribution: str = "gaussian") -> torch.Tensor:
    """Out-of-place seeded perturbation: a perturbed copy of ``tensor``, which is not written.

    Element ``i`` (row-major) of the result is::

        tensor[i] + mean_coeff*mean[i] + sum_j coeffs[j] * xi(seeds[j], key, offset + i)

    (``rho`` in place of ``xi`` with ``distribution="rademacher"``) in float32 with one rounding
    to nearest into the result's dtype: bit for bit what
    ``t = tensor.clone(); perturb_(t, seeds, coeffs, keys=[key], offsets=[offset], mean=...,
    mean_coeff=..., distribution=...)`` leaves in ``t`` (decay 1), on every backend, in one pass
    that reads ``tensor`` and writes the result. For forwards that must see W + c·z without the
    weights ever holding it. An ``out`` of another dtype receives that float32 result rounded to
    nearest into its dtype: from float32 weights, the bf16/fp16 copy ``torch.autocast`` would
    cast the perturbed float32 copy to, bit for bit, in one pass that writes half the bytes.

    Parameters
    ----------
    tensor : Tensor
        Contiguous float32/bfloat16/float16 tensor, any shape (read only).
    seeds : int or sequence of int
        Stream seeds in [0, 2**64).
    coeffs : float or sequence of float
        Finite coefficients, one per seed; numbers as for :func:`perturb_` (CPU tensors too).
    key : int
        Stream key in [0, 2**32) (``perturb_``'s ``keys[p]`` for this tensor).
    offset : int
        Stream index of element 0 (for a shard of a larger tensor); ``offset + tensor.numel()``
        must stay below 2**63.
    mean : Tensor, optional
        Shaped, typed and placed like ``tensor``, contiguous (read only).
    mean_coeff : float
        Coefficient of ``mean``; must be 0 when ``mean`` is None.
    out : Tensor, optional
        Where to write the result: shaped and placed like ``tensor``, contiguous, float32,
        bfloat16 or float16 (``tensor``'s dtype or another: one rounding to nearest from the
        float32 result), sharing no memory with ``tensor`` or ``mean``. **Mutated.** Default: a
        new tensor like ``tensor``.
    distribution : "gaussian" or "rademacher"
        The stream of the seeded terms, as for :func:`perturb_` (default "gaussian").

    Returns
    -------
    Tensor
        ``out``, or the new tensor (same shape, dtype and device as ``tensor``).

    Example
    -------
    A bf16 copy of float32 weights at θ + ε·z, for a forward under ``torch.autocast(bfloat16)``
    (which then casts nothing)::

        w16 = perturbed(w, seed, eps, key=k, out=torch.empty_like(w, dtype=torch.bfloat16))

    Raises
    ------
    TypeError, ValueError
        On a bad argument, before anything is written.
    RuntimeError
        If a backend forced by ``PGAP_BACKEND``/:func:`use_backend` cannot run.
    """
    args = validate_perturbed(tensor, seeds, coeffs, key=key, offset=offset, mean=mean,
                              mean_coeff=mean_coeff, out=out, distribution=distribution)
    result = args.tensors[0]
    if plain_eager_call([tensor, result] + (args.means or [])):
        _run_perturbed("", args)
        torch.autograd.graph.increment_version([result])  # as the op's ADInplaceOrView does
        return result
    torch.ops.pgap.perturbed_into(tensor, mean, [seed_to_int64(s) for s in args.seeds], args.coeffs,
                                  args.keys[0], args.offsets[0], args.mean_coeff, result, "",
                                  args.distribution)
    return result


def _perturbed_many_impl(tensors: List[torch.Tensor], means: List[torch.Tensor], seeds: List[int],
                         coeffs: List[float], keys: List[int], offsets: List[int],
                         mean_coeff: float, out: List[torch.Tensor], backend: str,
                         distribution: str = "gaussian") -> None:
    """Body of ``pgap::perturbed_many_into`` on CPU and CUDA: ``out[p]`` <- ``tensors[p]`` + the
    stream terms (``means`` empty when there is no mean term; seeds as int64 bit patterns)."""
    _perturbed_pair_many_impl(tensors, means, seeds, coeffs, keys, offsets, mean_coeff, out, [],
                              backend, distribution)


def _perturbed_pair_many_impl(tensors: List[torch.Tensor], means: List[torch.Tensor],
                              seeds: List[int], coeffs: List[float], keys: List[int],
                              offsets: List[int], mean_coeff: float, out: List[torch.Tensor],
                              out_minus: List[torch.Tensor], backend: str,
                              distribution: str = "gaussian") -> None:
    """Body of ``pgap::perturbed_pair_many_into``: as ``perturbed_many_into``, and ``out_minus[p]``
    <- ``tensors[p]`` minus the mean and stream terms (``out_minus`` empty: none)."""
    _run_perturbed(backend, PerturbArgs(list(out), list(means) if means else None,
                                        [seed_from_int64(s) for s in seeds], list(coeffs),
                                        list(keys), list(offsets), 1.0, mean_coeff,
                                        sources=list(tensors),
                                        distribution=check_distribution(distribution),
                                        minus=list(out_minus) if out_minus else None),
                   indexed=True)


def _perturbed_many_fake(tensors, means, seeds, coeffs, keys, offsets, mean_coeff, out,
                         backend, distribution="gaussian") -> None:
    check_distribution(distribution)
    return None


def _perturbed_pair_many_fake(tensors, means, seeds, coeffs, keys, offsets, mean_coeff, out,
                              out_minus, backend, distribution="gaussian") -> None:
    return _perturbed_many_fake(tensors, means, seeds, coeffs, keys, offsets, mean_coeff, out,
                                backend, distribution)


define_op("perturbed_pair_many_into", _perturbed_pair_many_impl, _perturbed_pair_many_fake,
          mutates_args=("out", "out_minus"))
define_op("perturbed_many_into", _perturbed_many_impl, _perturbed_many_fake, mutates_args=("out",))


@torch.no_grad()
def perturbed_many(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                   keys: Optional[Sequence[int]] = None, offsets: Optional[Sequence[int]] = None,
                   mean: Optional[TensorList] = None, mean_coeff: float = 0.0,
                   out: Optional[TensorList] = None,
                   distribution: str = "gaussian",
                   out_minus: Optional[TensorList] = None) -> List[torch.Tensor]:
    """Perturbed copies of many tensors in one call: :func:`perturbed` for each tensor, with
    :func:`perturb_`'s list arguments.

    ``out[p]`` (a new tensor when ``out`` is None) receives, element by element::

        tensors[p][i] + mean_coeff*mean[p][i] + sum_j coeffs[j] * xi(seeds[j], keys[p], offsets[p] + i)

    bit for bit what ``perturbed(tensors[p], ..., key=keys[p], offset=offsets[p])`` returns, on
    every backend, in one kernel launch per dtype pair (one Python call instead of one per tensor: on
    a GPU each call costs ~100 us of host time). ``tensors`` are never written.

    Parameters
    ----------
    tensors : Tensor or iterable of Tensor
        Contiguous float32/bfloat16/float16 tensors on one device (read only; a tensor may be
        listed twice).
    seeds, coeffs, keys, offsets, mean, mean_coeff, distribution
        As for :func:`perturb_` (keys default to the list positions, offsets to 0; the stream
        ``xi``, or ``rho`` with ``distribution="rademacher"``).
    out : iterable of Tensor, optional
        One tensor per entry of ``tensors``, shaped and placed like it, contiguous, float32,
        bfloat16 or float16 (its source's dtype or another, as for :func:`perturbed`), sharing no
        memory with each other, any source or any mean. **Mutated.** Default: new tensors like
        the sources.
    out_minus : iterable of Tensor, optional
        Each like ``out[p]`` (its dtype too) and disjoint from every ``out``: ``out_minus[p]``
        receives the mirrored copy
        ``tensors[p][i] - mean_coeff*mean[p][i] - sum_j coeffs[j] * xi(...)``, bit for bit what
        the call with every coefficient and ``mean_coeff`` negated writes to ``out`` (the two
        points of a two-point estimate, θ ± ε·z, from one draw of z). **Mutated.** The native
        backend writes both in one pass over ``tensors`` with one draw of the stream; the
        others run the second pass after the first.

    Returns
    -------
    list of Tensor
        ``out`` (or the new tensors), in the order of ``tensors``.

    Raises
    ------
    TypeError, ValueError
        On a bad argument, before anything is written.
    RuntimeError
        If a backend forced by ``PGAP_BACKEND``/:func:`use_backend` cannot run.
    """
    args = validate_perturbed_many(tensors, seeds, coeffs, keys=keys, offsets=offsets, mean=mean,
                                   mean_coeff=mean_coeff, out=out, distribution=distribution,
                                   out_minus=out_minus)
    if not args.tensors:
        return []
    written = args.tensors + (args.minus or [])
    if plain_eager_call(args.sources + written + (args.means or [])):
        _run_perturbed("", args, indexed=True)
        torch.autograd.graph.increment_version(written)  # as the op's ADInplaceOrView does
        return args.tensors
    perturbed_many_op(args)
    return args.tensors


def perturbed_many_op(args: PerturbArgs) -> None:
    """Run the validated out-of-place pass ``args`` through the custom op
    ``pgap::perturbed_many_into``, or ``pgap::perturbed_pair_many_into`` with minus outputs
    (for torch.compile, dispatch modes, tensor subclasses)."""
    seeds = [seed_to_int64(s) for s in args.seeds]
    if args.minus is not None:
        torch.ops.pgap.perturbed_pair_many_into(args.sources, args.means or [], seeds, args.coeffs,
                                                args.keys, args.offsets, args.mean_coeff, args.tensors,
                                                args.minus, "", args.distribution)
        return
    torch.ops.pgap.perturbed_many_into(args.sources, args.means or [], seeds, args.coeffs,
                                       args.keys, args.offsets, args.mean_coeff, args.tensors, "",
                                       args.distribution)


def _draw(shape: ShapeLike, seed: int, key: int, offset: int, device: DeviceLike,
          dtype: torch.dtype, distribution: str) -> torch.Tensor:
    """A new tensor holding the stream ``distribution`` at indices offset, offset + 1, ..."""
    check_float_dtype(dtype, "dtype")
    size = torch.Size([shape] if isinstance(shape, int) else shape)
    if any(s < 0 for s in size):
        raise ValueError(f"shape must have non-negative sizes, got {tuple(size)}")
    check_int(key, "key", 0, KEY_LIMIT)
    check_int(offset, "offset", 0, INDEX_LIMIT - size.numel())
    out = torch.empty(size, device=as_device(device), dtype=dtype)
    perturb_(out, seed, 1.0, keys=[key], offsets=[offset], decay=0.0, distribution=distribution)
    return out


def gaussian(shape: ShapeLike, seed: int, *, key: int = 0, offset: int = 0,
             device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new tensor whose element i (row-major) is ``xi(seed, key, offset + i)``.

    Parameters
    ----------
    shape : int or sequence of int
    seed : int in [0, 2**64)
    key : int in [0, 2**32)
    offset : int >= 0, with ``offset + numel < 2**63``
    device : torch.device, str or int, optional (default CPU)
    dtype : torch.float32, torch.bfloat16 or torch.float16 (one rounding from float32)
    """
    return _draw(shape, seed, key, offset, device, dtype, "gaussian")


def rademacher(shape: ShapeLike, seed: int, *, key: int = 0, offset: int = 0,
               device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new tensor whose element i (row-major) is ``rho(seed, key, offset + i)``, exactly +1 or
    -1: the philox4x32-10-rademacher/v1 stream (docs/rng.md, "The Rademacher stream"), what
    ``perturb_(..., distribution="rademacher")`` adds. Parameters as for :func:`gaussian` (every
    dtype holds +-1 exactly)."""
    return _draw(shape, seed, key, offset, device, dtype, "rademacher")
