"""Argument checks shared by the optimizers (messages name the argument and what was expected)."""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

import torch

import pgap_kernels


def check_real(value: object, name: str, *, low: Optional[float] = None, strict: bool = False) -> float:
    """A finite real number, optionally ``> low`` (strict) or ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return value


def check_int(value: object, name: str, *, low: int, high: Optional[int] = None) -> int:
    """An integer in [low, high) (no upper bound when ``high`` is None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def check_backend(backend: Optional[str], device: torch.device) -> Optional[str]:
    """None, or a pgap_kernels backend that can run on ``device``."""
    if backend is None:
        return None
    status = pgap_kernels.backend_status(device)
    if backend not in status:
        raise ValueError(f"backend must be one of {sorted(status)} or None, got {backend!r}")
    if status[backend] is not None:
        raise ValueError(f"backend {backend!r} cannot run on {device}: {status[backend]}")
    return backend


def check_no_autocast_cache(device_types: Iterable[str]) -> None:
    """Raise if a step is about to run inside ``torch.autocast`` with its cast cache on for one of
    ``device_types``: the cache keeps each weight's first low-precision cast for the whole
    region, so the second forward of a two-point step would read the first one's weights and
    every projected gradient would come out 0, silently."""
    if not torch.is_autocast_cache_enabled():
        return
    for device_type in sorted(set(device_types)):
        if torch.is_autocast_enabled(device_type):
            raise RuntimeError(
                f"step() runs inside torch.autocast({device_type!r}) with its cast cache on: the "
                "weights perturbed in place between the step's forwards would be read from the first "
                "forward's cached casts (g = 0). Enter autocast inside the closure, per forward, or "
                "pass cache_enabled=False (pgap.dtypes.compute_context does both)")
