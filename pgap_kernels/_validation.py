"""Argument checks for the public ops, run before any tensor is touched."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._stream import INDEX_LIMIT, KEY_LIMIT, SEED_LIMIT

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ROUNDINGS = ("nearest", "stochastic")

TensorList = Union[torch.Tensor, Iterable[torch.Tensor]]
IntOrInts = Union[int, Sequence[int]]
# A coefficient: a real number, or a 0-d/one-element CPU tensor or numpy array holding one.
FloatOrFloats = Union[float, torch.Tensor, Sequence[Union[float, torch.Tensor]]]


@dataclass
class PerturbArgs:
    """Normalized, validated arguments of :func:`pgap_kernels.perturb_` and
    :func:`pgap_kernels.perturbed`.

    ``tensors`` are written; the decay term reads ``sources[p]`` (same shape, dtype and device,
    disjoint from every written tensor) or, when ``sources`` is None, ``tensors[p]`` itself.
    With a ``rounding_seed``, 16-bit results round stochastically: element i of tensor p with the
    rounding word of element ``offsets[p] + i`` under (rounding_seed, ``keys[p]``).
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

    def source(self, p: int) -> torch.Tensor:
        """The tensor the decay term of tensor p reads."""
        return self.tensors[p] if self.sources is None else self.sources[p]


def _is_int(x: object) -> bool:
    if type(x) is int:  # fast path: ABC checks cost microseconds per element
        return True
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    if type(x) is float or type(x) is int:
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _as_list(value, name: str) -> list:
    """A list from any iterable (e.g. ``model.parameters()``), but not from a str or bytes."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence, got {type(value).__name__}")
    return list(value)


def check_float_dtype(dtype: torch.dtype, name: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {dtype}; expected one of float32, bfloat16, float16")


def check_int(value: object, name: str, low: int, high: int) -> int:
    """``value`` must be an integer in [low, high)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not low <= value < high:
        raise ValueError(f"{name} must lie in [{low}, {high}), got {value}")
    return value


def _is_scalar_array(x: object) -> bool:
    """A torch tensor or numpy array holding exactly one number (0-d, or one element)."""
    return isinstance(x, torch.Tensor) and x.numel() == 1 or isinstance(x, np.ndarray) and x.size == 1


def _host_number(value: object, name: str) -> object:
    """``value``, or the Python number inside a 0-d or one-element CPU tensor or numpy array.

    A coefficient computed as a tensor (MeZO's ``projected_grad``) may be passed as is when it
    lives on the CPU. A tensor on another device (CUDA) is refused: reading it would be a hidden
    host synchronization, so the caller writes ``.item()`` where that wait is wanted.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} is a tensor of shape {tuple(value.shape)}; expected one number "
                             "(a Python float, or a 0-d or one-element CPU tensor)")
        if value.device.type != "cpu":
            raise TypeError(f"{name} is a tensor on {value.device}; pass a Python number: g.item() "
                            "for a tensor g, t.tolist() for a tensor t of coefficients (reading a tensor off the CPU is a host synchronization, "
                            "which pgap_kernels never makes on its own)")
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise TypeError(f"{name} is a {value.dtype} tensor; expected a real number")
        return value.item()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"{name} is a numpy array of shape {value.shape}; expected one number")
        if value.dtype.kind not in "iuf":
            raise TypeError(f"{name} is a numpy array of dtype {value.dtype}; expected a real number")
        return value.item()
    return value


def check_finite(value: object, name: str) -> float:
    """``value`` as a finite float: a real number (numpy scalars included) or a 0-d/one-element
    CPU tensor or numpy array; TypeError otherwise, ValueError for NaN or ±inf."""
    value = _host_number(value, name)
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def real_or_list(value: object, name: str) -> list:
    """``[value]`` for one number (a real, or a tensor or numpy array of one element), else
    ``value`` as a list (a sequence of numbers, or a 1-D tensor or array: its elements). The
    elements are checked by :func:`check_finite`."""
    if _is_real(value) or _is_scalar_array(value):
        return [value]
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim != 1:
        raise ValueError(f"{name} is an array of shape {tuple(value.shape)}; expected one number "
                         "or a 1-D sequence of numbers")
    return _as_list(value, name)


def check_seeds_coeffs(seeds: IntOrInts, coeffs: FloatOrFloats) -> Tuple[List[int], List[float]]:
    """Seeds in [0, 2**64) and finite coefficients, one per seed, as lists. Coefficients may be
    numbers or CPU tensors/arrays holding them (:func:`real_or_list`, :func:`check_finite`)."""
    seeds_l = [seeds] if _is_int(seeds) else _as_list(seeds, "seeds")
    coeffs_l = real_or_list(coeffs, "coeffs")
    if len(seeds_l) != len(coeffs_l):
        raise ValueError(f"seeds has {len(seeds_l)} entries but coeffs has {len(coeffs_l)}; "
                         "they must have equal lengths")
    return ([check_int(s, f"seeds[{j}]", 0, SEED_LIMIT) for j, s in enumerate(seeds_l)],
            [check_finite(c, f"coeffs[{j}]") for j, c in enumerate(coeffs_l)])


def check_rounding(rounding: str, rounding_seed: Optional[int], default_seed: Optional[int],
                   missing: str) -> Optional[int]:
    """The seed of the stochastic-rounding words, or None for round to nearest.

    ``rounding`` must be "nearest" or "stochastic"; ``rounding_seed`` (checked whenever given)
    an int in [0, 2**64). Stochastic rounding uses ``rounding_seed``, else ``default_seed``;
    with neither it raises ValueError, ``missing`` saying why there is no default.
    """
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(map(repr, ROUNDINGS))}; got {rounding!r}")
    if rounding_seed is not None:
        rounding_seed = check_int(rounding_seed, "rounding_seed", 0, SEED_LIMIT)
    if rounding == "nearest":
        return None
    seed = rounding_seed if rounding_seed is not None else default_seed
    if seed is None:
        raise ValueError(f"rounding='stochastic' needs a rounding_seed in [0, 2**64) ({missing})")
    return seed


def check_keys_offsets(keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                       spans: Sequence[int], what: str = "tensors") -> Tuple[List[int], List[int]]:
    """Per-tensor stream keys and offsets as lists, defaults filled in.

    ``spans[p]`` is how many stream indices tensor p draws (its numel for ``perturb_``): keys
    lie in [0, 2**32) (default the list positions 0, 1, ...), offsets in [0, 2**63 - spans[p])
    (default 0). ``what`` names the list of tensors in messages.
    """
    n = len(spans)
    if keys is None:
        keys_l = list(range(n))
    else:
        keys_l = _as_list(keys, "keys")
        if len(keys_l) != n:
            raise ValueError(f"keys has {len(keys_l)} entries but {what} has {n}")
    keys_l = [check_int(k, f"keys[{p}]", 0, KEY_LIMIT) for p, k in enumerate(keys_l)]
    if offsets is None:
        offsets_l = [0] * n
    else:
        offsets_l = _as_list(offsets, "offsets")
        if len(offsets_l) != n:
            raise ValueError(f"offsets has {len(offsets_l)} entries but {what} has {n}")
    offsets_l = [check_int(o, f"offsets[{p}]", 0, INDEX_LIMIT - spans[p])
                 for p, o in enumerate(offsets_l)]
    return keys_l, offsets_l


def _check_tensor(t, name: str) -> torch.Tensor:
    """A contiguous float32/bfloat16/float16 tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_float_dtype(t.dtype, name)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() on a copy)")
    return t


def _check_like(x, t: torch.Tensor, name: str, like: str) -> torch.Tensor:
    """A contiguous tensor ``x`` shaped, typed and placed like ``t`` (called ``like``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != t.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(t.shape)}")
    if x.dtype != t.dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, expected {t.dtype} like {like}")
    if x.device != t.device:
        raise ValueError(f"{name} is on {x.device}, expected {t.device} like {like}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return x


def _check_tensors(tensors: TensorList) -> List[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    tensors = _as_list(tensors, "tensors")
    device = None
    for p, t in enumerate(tensors):
        _check_tensor(t, f"tensors[{p}]")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"tensors[{p}] is on {t.device} but tensors[0] is on {device}; "
                             "all tensors must share one device")
    return tensors


def _check_means(mean, tensors: List[torch.Tensor]) -> Optional[List[torch.Tensor]]:
    if mean is None:
        return None
    if isinstance(mean, torch.Tensor):
        mean = [mean]
    mean = _as_list(mean, "mean")
    if len(mean) != len(tensors):
        raise ValueError(f"mean has {len(mean)} tensors but tensors has {len(tensors)}")
    for p, (m, t) in enumerate(zip(mean, tensors)):
        _check_like(m, t, f"mean[{p}]", f"tensors[{p}]")
    return mean


def _check_mean_coeff(mean_coeff: float, has_mean: bool) -> float:
    mean_coeff = check_finite(mean_coeff, "mean_coeff")
    if not has_mean and mean_coeff != 0.0:
        raise ValueError("mean_coeff is nonzero but mean is None; pass mean=... or mean_coeff=0")
    return mean_coeff


def _check_stream_terms(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats,
                        keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                        mean: Optional[TensorList], mean_coeff: float, decay: float) -> PerturbArgs:
    """The arguments ``perturb_`` and ``perturbed_many`` share, checked, as one pass over
    ``tensors`` (round to nearest, in place until the caller sets ``sources``)."""
    tensors = _check_tensors(tensors)
    seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
    keys_l, offsets_l = check_keys_offsets(keys, offsets, [t.numel() for t in tensors])
    decay = check_finite(decay, "decay")
    means = _check_means(mean, tensors)
    mean_coeff = _check_mean_coeff(mean_coeff, means is not None)
    return PerturbArgs(tensors, means, seeds_l, coeffs_l, keys_l, offsets_l, decay, mean_coeff)


def validate_perturb(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                     keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                     decay: float, mean: Optional[TensorList], mean_coeff: float,
                     rounding: str = "nearest", rounding_seed: Optional[int] = None) -> PerturbArgs:
    """Check every argument of ``perturb_``; raise TypeError/ValueError naming the culprit."""
    args = _check_stream_terms(tensors, seeds, coeffs, keys, offsets, mean, mean_coeff, decay)
    args.rounding_seed = check_rounding(rounding, rounding_seed, args.seeds[0] if args.seeds else None,
                                        "it defaults to seeds[0], and seeds is empty")
    return args


def validate_perturbed_many(tensors: TensorList, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                            keys: Optional[Sequence[int]], offsets: Optional[Sequence[int]],
                            mean: Optional[TensorList], mean_coeff: float,
                            out: Optional[TensorList]) -> PerturbArgs:
    """Check every argument of ``perturbed_many``; raise TypeError/ValueError naming the culprit.

    Returns one out-of-place pass (decay 1) from ``tensors`` (the sources, read only) into
    ``out`` (new tensors like them when None). Overlaps are checked by the op on the real tensors.
    """
    args = _check_stream_terms(tensors, seeds, coeffs, keys, offsets, mean, mean_coeff, 1.0)
    sources = args.tensors
    if out is None:
        outs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in sources]
    else:
        outs = _as_list([out] if isinstance(out, torch.Tensor) else out, "out")
        if len(outs) != len(sources):
            raise ValueError(f"out has {len(outs)} tensors but tensors has {len(sources)}")
        for p, (o, t) in enumerate(zip(outs, sources)):
            _check_like(o, t, f"out[{p}]", f"tensors[{p}]")
    args.tensors, args.sources = outs, sources
    return args


def validate_perturbed(tensor: torch.Tensor, seeds: IntOrInts, coeffs: FloatOrFloats, *,
                       key: int, offset: int, mean: Optional[torch.Tensor], mean_coeff: float,
                       out: Optional[torch.Tensor]) -> PerturbArgs:
    """Check every argument of ``perturbed``; raise TypeError/ValueError naming the culprit.

    Returns the arguments of one out-of-place pass (decay 1) from ``tensor`` into ``out``, a new
    tensor like ``tensor`` when None. Memory overlaps need data pointers: the op checks them on
    the real tensors (:func:`pgap_kernels._lowrank_validation.check_disjoint`), still before
    anything is written.
    """
    tensor = _check_tensor(tensor, "tensor")
    seeds_l, coeffs_l = check_seeds_coeffs(seeds, coeffs)
    key = check_int(key, "key", 0, KEY_LIMIT)
    offset = check_int(offset, "offset", 0, INDEX_LIMIT - tensor.numel())
    if mean is not None:
        _check_like(mean, tensor, "mean", "tensor")
    mean_coeff = _check_mean_coeff(mean_coeff, mean is not None)
    if out is None:
        out = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    else:
        _check_like(out, tensor, "out", "tensor")
    return PerturbArgs([out], None if mean is None else [mean], seeds_l, coeffs_l, [key], [offset],
                       1.0, mean_coeff, sources=[tensor])
