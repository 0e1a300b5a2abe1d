"""A ZO step inside a user's ``torch.autocast`` region: the forwards keep the region's precision,
everything else of the step does not.

Autocast's cast cache keeps each weight's first low-precision cast for as long as the region
lasts, so around a whole step the second forward would read the first one's weights (g = 0,
silently), and the optimizer's own linear algebra (P-GAP's randomized SVD, AGZO's bases) would
run in bf16. :func:`per_forward` gives each closure a region of its own (same dtype, no cast
cache: :func:`pgap.dtypes.compute_context`), and :func:`outside` turns autocast off for the rest
of the step.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, TypeVar

import torch

from .dtypes import compute_context

Region = Tuple[str, torch.dtype]  # device type, autocast dtype
F = TypeVar("F", bound=Callable)


def active_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype of the autocast region enabled now for ``device_type``, or None."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def open_regions(device_types: Iterable[str]) -> List[Region]:
    """The autocast regions enabled now for ``device_types`` (distinct device type names)."""
    return [(t, d) for t in device_types for d in [active_dtype(t)] if d is not None]


def per_forward(fn: Optional[F], regions: List[Region]) -> Optional[F]:
    """``fn`` run inside ``regions`` again, without the cast cache (None stays None)."""
    if fn is None or not regions:
        return fn

    def forward(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for device_type, dtype in regions:
                stack.enter_context(compute_context(dtype, device_type))
            return fn(*args, **kwargs)
    return forward  # type: ignore[return-value]


@contextlib.contextmanager
def outside(regions: List[Region]) -> Iterator[None]:
    """Autocast off for ``regions``' device types; on exit the cache is cleared (casts taken in
    the region before the step are of weights the step has changed)."""
    with contextlib.ExitStack() as stack:
        for device_type, _ in regions:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield
    if regions:
        torch.clear_autocast_cache()
