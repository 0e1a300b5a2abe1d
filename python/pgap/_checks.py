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
