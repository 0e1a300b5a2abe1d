"""Per-device backend choice, and the run of an op on the chosen backend.

Automatic order per device type: CUDA ``cuda > triton > reference``; CPU ``native > reference``.
``PGAP_BACKEND=<name>`` or ``with pgap_kernels.use_backend(name):`` force one backend; a forced
backend that cannot run raises, an automatic choice falls back with one log line.

Before a backend other than ``reference`` first runs on a device it passes its self-check
(:mod:`pgap_kernels.selftest`, cached per process): the automatic choice skips a backend that
fails it with one warning; a forced backend that fails it raises. ``PGAP_SELFTEST=0`` turns the
check off. The self-check calls the backends through the registry (:mod:`pgap_kernels.backends`),
never through this module, so it cannot recurse into itself.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import warnings
from typing import Dict, Iterator, List, Optional, TypeVar

import torch

from . import selftest
from ._checks import DeviceLike, as_device
from .backends import BACKENDS, Op, call, check_name, unavailable_reason

logger = logging.getLogger("pgap_kernels")

AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("native", "reference")}

A = TypeVar("A")
R = TypeVar("R")

_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("pgap_backend", default=None)
_fallbacks_logged: set = set()
_selftest_warned: set = set()


def backend_status(device: DeviceLike = None) -> Dict[str, Optional[str]]:
    """Map every backend name to ``None`` (usable on ``device``) or the reason it is not."""
    dev = as_device(device)
    return {name: unavailable_reason(name, dev) for name in BACKENDS}


def available_backends(device: DeviceLike = None) -> List[str]:
    """Names of the backends that can run on ``device`` (default CPU), best first."""
    dev = as_device(device)
    status = backend_status(dev)
    order = list(AUTO_ORDER.get(dev.type, ("reference",)))
    order += [n for n in BACKENDS if n not in order]
    return [n for n in order if status[n] is None]


def forced_backend() -> Optional[str]:
    """The backend forced by :func:`use_backend` or, failing that, ``PGAP_BACKEND``."""
    name = _forced.get()
    if name is not None:
        return name
    env = os.environ.get("PGAP_BACKEND", "").strip()
    return check_name(env, "PGAP_BACKEND") if env else None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` for the ops called inside the block (overrides PGAP_BACKEND)."""
    token = _forced.set(check_name(name, "backend name"))
    try:
        yield
    finally:
        _forced.reset(token)


def run_backend(op: Op[A, R], device: torch.device, args: A, *, backend: str = "") -> R:
    """Run ``op`` on ``args`` (tensors on ``device``) with the backend that runs on ``device``,
    ``device`` current (:func:`pgap_kernels.backends.device_guard`).

    ``backend`` names one (it must be able to run there) or is "" for the forced/automatic
    choice, made now (so it is not baked into torch.compile graphs).
    """
    if backend:
        reason = unavailable_reason(backend, device)
        if reason is not None:
            raise RuntimeError(f"pgap_kernels backend {backend!r} cannot run on {device}: {reason}")
    else:
        backend = resolve_backend(device)
    return call(backend, op, device, args)


def _self_check(name: str, device: torch.device) -> Optional[selftest.CheckResult]:
    """The failed self-check of ``name`` on ``device``, or None (passed, disabled, reference)."""
    if name == "reference" or not selftest.enabled():
        return None
    result = selftest.check(name, device)
    return None if result.passed else result


def resolve_backend(device: torch.device) -> str:
    """The backend that will run an op on ``device``; raises if a forced one cannot, or fails
    its self-check."""
    forced = forced_backend()
    if forced is not None:
        reason = unavailable_reason(forced, device)
        if reason is not None:
            raise RuntimeError(f"pgap_kernels backend {forced!r} was requested for {device} "
                               f"but cannot run: {reason}")
        failed = _self_check(forced, device)
        if failed is not None:
            raise RuntimeError(f"{failed.message()} (it was forced by use_backend/PGAP_BACKEND; "
                               "PGAP_SELFTEST=0 skips the check at your own risk)")
        return forced
    order = AUTO_ORDER.get(device.type, ("reference",))
    reasons = []
    for name in order:
        reason = unavailable_reason(name, device)
        if reason is None:
            failed = _self_check(name, device)
            if failed is not None:
                if (name, failed.device) not in _selftest_warned:
                    _selftest_warned.add((name, failed.device))
                    warnings.warn(f"{failed.message()}; the automatic choice skips it. Please "
                                  "report this with `python -m pgap_kernels.info --selftest`.",
                                  RuntimeWarning, stacklevel=2)
                reason = "failed its self-check"
        if reason is None:
            if reasons and (device.type, name) not in _fallbacks_logged:
                _fallbacks_logged.add((device.type, name))
                logger.warning("pgap_kernels: using backend %r on %s (%s)", name, device.type,
                               "; ".join(reasons))
            return name
        reasons.append(f"{name} unavailable: {reason}")
    raise RuntimeError(f"no pgap_kernels backend can run on {device}: {'; '.join(reasons)}")
