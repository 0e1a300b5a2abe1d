"""Backend registry and per-device backend choice.

Automatic order per device type: CUDA ``cuda > triton > reference``; CPU ``native > reference``.
``PGAP_BACKEND=<name>`` or ``with pgap_kernels.use_backend(name):`` force one backend; a forced
backend that cannot run raises, an automatic choice falls back with one log line.

Before a backend other than ``reference`` first runs on a device it passes its self-check
(:mod:`pgap_kernels.selftest`, cached per process): the automatic choice skips a backend that
fails it with one warning; a forced backend that fails it raises. ``PGAP_SELFTEST=0`` turns the
check off.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os
import warnings
from types import ModuleType
from typing import ContextManager, Dict, Iterator, List, Optional, Union

import torch

from . import selftest

logger = logging.getLogger("pgap_kernels")

BACKENDS = ("reference", "native", "cuda", "triton")
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("native", "reference")}

_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("pgap_backend", default=None)
_fallbacks_logged: set = set()
_selftest_warned: set = set()

DeviceLike = Union[str, int, torch.device, None]


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


_modules: Dict[str, ModuleType] = {}  # imported backend modules: one dict lookup per op call


def _module(path: str) -> ModuleType:
    module = _modules.get(path)
    if module is None:
        module = _modules[path] = importlib.import_module(path)
    return module


def backend_module(name: str) -> ModuleType:
    """The package ``pgap_kernels.backends.<name>`` (cheap: kernels load on first use)."""
    return _module(f"pgap_kernels.backends.{_check_name(name, 'backend')}")


def backend_op(name: str, op: str) -> ModuleType:
    """The module ``pgap_kernels.backends.<name>.<op>``, imported on first use (kernels load then)."""
    return _module(f"pgap_kernels.backends.{_check_name(name, 'backend')}.{op}")


def as_device(device: DeviceLike) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def backend_status(device: DeviceLike = None) -> Dict[str, Optional[str]]:
    """Map every backend name to ``None`` (usable on ``device``) or the reason it is not."""
    dev = as_device(device)
    return {name: backend_module(name).unavailable_reason(dev) for name in BACKENDS}


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
    return _check_name(env, "PGAP_BACKEND") if env else None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` for the ops called inside the block (overrides PGAP_BACKEND)."""
    token = _forced.set(_check_name(name, "backend name"))
    try:
        yield
    finally:
        _forced.reset(token)


def run_backend(op: str, func: str, device: torch.device, *args, backend: str = ""):
    """Call ``backends.<name>.<op>.<func>(*args)`` for the backend that runs on ``device``,
    with ``device`` current (:func:`device_guard`).

    ``backend`` names one (it must be able to run there) or is "" for the forced/automatic
    choice, made now (so it is not baked into torch.compile graphs).
    """
    with device_guard(device):
        if backend:
            reason = backend_module(backend).unavailable_reason(device)
            if reason is not None:
                raise RuntimeError(f"pgap_kernels backend {backend!r} cannot run on {device}: {reason}")
        else:
            backend = resolve_backend(device)
        return getattr(backend_op(backend, op), func)(*args)


def device_guard(device: torch.device) -> ContextManager[object]:
    """The one device guard of every launch: ``device`` is torch's current CUDA device inside
    (then the previous one again), so Triton's launches, ``torch.cuda.current_stream()`` and the
    C++ kernels all run on the tensors' device and its current stream, whichever device the
    caller had current. A no-op for CPU tensors."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _self_check(name: str, device: torch.device) -> Optional[selftest.CheckResult]:
    """The failed self-check of ``name`` on ``device``, or None (passed, disabled, reference,
    or called from inside a self-check)."""
    if name == "reference" or not selftest.enabled() or selftest.running():
        return None
    result = selftest.check(name, device)
    return None if result.passed else result


def resolve_backend(device: torch.device) -> str:
    """The backend that will run an op on ``device``; raises if a forced one cannot, or fails
    its self-check."""
    forced = forced_backend()
    if forced is not None:
        reason = backend_module(forced).unavailable_reason(device)
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
        reason = backend_module(name).unavailable_reason(device)
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
