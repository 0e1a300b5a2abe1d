"""Argument checks shared by the public ops, run before any tensor is touched.

Each op's front-end module (``perturb.py``, ``lowrank.py``, ``sketch.py``, ``subspace.py``)
combines these into its own ``validate_*`` function, which returns the op's argument class
(:mod:`pgap_kernels.args`).
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._stream import INDEX_LIMIT, KEY_LIMIT, SEED_LIMIT
from .args import SketchProblem

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ROUNDINGS = ("nearest", "stochastic")

DeviceLike = Union[str, int, torch.device, None]
TensorList = Union[torch.Tensor, Iterable[torch.Tensor]]
MatrixOrMatrices = Union[torch.Tensor, Sequence[torch.Tensor]]
IntOrInts = Union[int, Sequence[int]]
# A coefficient: a real number, or a 0-d/one-element CPU tensor or numpy array holding one.
FloatOrFloats = Union[float, torch.Tensor, Sequence[Union[float, torch.Tensor]]]


def _is_int(x: object) -> bool:
    if type(x) is int:  # fast path: ABC checks cost microseconds per element
        return True
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    if type(x) is float or type(x) is int:
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def as_list(value, name: str) -> list:
    """A list from any iterable (e.g. ``model.parameters()``), but not from a str or bytes."""
    if type(value) is list or type(value) is tuple:  # fast path: the Iterable ABC check costs ~1 us
        return list(value)
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
    return as_list(value, name)


def check_seeds_coeffs(seeds: IntOrInts, coeffs: FloatOrFloats) -> Tuple[List[int], List[float]]:
    """Seeds in [0, 2**64) and finite coefficients, one per seed, as lists. Coefficients may be
    numbers or CPU tensors/arrays holding them (:func:`real_or_list`, :func:`check_finite`)."""
    seeds_l = [seeds] if _is_int(seeds) else as_list(seeds, "seeds")
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
        keys_l = as_list(keys, "keys")
        if len(keys_l) != n:
            raise ValueError(f"keys has {len(keys_l)} entries but {what} has {n}")
    keys_l = [check_int(k, f"keys[{p}]", 0, KEY_LIMIT) for p, k in enumerate(keys_l)]
    if offsets is None:
        offsets_l = [0] * n
    else:
        offsets_l = as_list(offsets, "offsets")
        if len(offsets_l) != n:
            raise ValueError(f"offsets has {len(offsets_l)} entries but {what} has {n}")
    offsets_l = [check_int(o, f"offsets[{p}]", 0, INDEX_LIMIT - spans[p])
                 for p, o in enumerate(offsets_l)]
    return keys_l, offsets_l


def check_tensor(t, name: str) -> torch.Tensor:
    """A contiguous float32/bfloat16/float16 tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_float_dtype(t.dtype, name)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() on a copy)")
    return t


def check_like(x, t: torch.Tensor, name: str, like: str, any_float: bool = False) -> torch.Tensor:
    """A contiguous tensor ``x`` shaped, typed and placed like ``t`` (called ``like``); with
    ``any_float``, of any float32/bfloat16/float16 dtype instead of ``t``'s."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != t.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(t.shape)}")
    if any_float:
        check_float_dtype(x.dtype, name)
    elif x.dtype != t.dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, expected {t.dtype} like {like}")
    if x.device != t.device:
        raise ValueError(f"{name} is on {x.device}, expected {t.device} like {like}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return x


def check_tensors(tensors: TensorList) -> List[torch.Tensor]:
    """One tensor or an iterable of them, as a list, each passing :func:`check_tensor`, all on one device."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    tensors = as_list(tensors, "tensors")
    device = None
    for p, t in enumerate(tensors):
        check_tensor(t, f"tensors[{p}]")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"tensors[{p}] is on {t.device} but tensors[0] is on {device}; "
                             "all tensors must share one device")
    return tensors


def as_device(device: DeviceLike) -> torch.device:
    """A ``torch.device`` from a device, a name or a CUDA index (None: the CPU)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def matrix_list(value, name: str) -> List[torch.Tensor]:
    """``[value]`` for one tensor, else ``value`` as a list."""
    if isinstance(value, torch.Tensor):
        return [value]
    return as_list(value, name)


def check_matrix(t, name: str, device: Optional[torch.device]) -> torch.Tensor:
    """A 2-D float32/bfloat16/float16 tensor on ``device`` (any device when None)."""
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
    """A matrix that an op writes in place: :func:`check_matrix` and contiguous."""
    check_matrix(t, name, device)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() on a copy)")
    return t


def _span(t: torch.Tensor) -> Tuple[int, int]:
    """[first, last) byte addresses a (possibly strided, non-empty) tensor can touch."""
    first = t.data_ptr()
    if t.is_contiguous():  # every tensor the ops accept: no Python loop over the strides
        return first, first + t.numel() * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return first, first + (last + 1) * t.element_size()


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
