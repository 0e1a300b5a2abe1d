"""The backend registry: which backends exist, the ops every backend implements, and the typed
lookup of one backend's function for one op.

Each backend is a sub-package ``backends/<name>/`` whose ``__init__`` is cheap (it imports no
kernel, no ``_C``, no Triton) and defines

* ``unavailable_reason(device) -> Optional[str]`` (None: it can run on ``device``), and
* ``OPS``: the registry line, the :class:`Op` entries it implements (every entry of :data:`OPS`),

and one module per op, ``backends/<name>/<op.module>.py``, defining ``op.function(args)``
taking the op's argument class (:mod:`pgap_kernels.args`). That module is imported on the op's
first use on that backend (Triton's modules import triton, the C++ ones load ``_C``).

This module imports no op and no backend kernel: the dispatcher (:mod:`pgap_kernels._dispatch`)
and the self-check (:mod:`pgap_kernels.selftest`) both call backends through :func:`call`.
``tests/kernels/test_registry.py`` checks that every backend provides every op with its argument class.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, ContextManager, Dict, Generic, List, Optional, Tuple, Type, TypeVar

import torch

from ..args import LowrankArgs, PerturbArgs, SketchArgs, SubspaceArgs

A = TypeVar("A")
R = TypeVar("R")

BACKENDS = ("reference", "native", "cuda", "triton")


@dataclass(frozen=True)
class Op(Generic[A, R]):
    """One backend entry point: ``backends/<name>/<module>.py`` defines ``function(args: A) -> R``
    with ``args`` an instance of ``args_type``."""

    module: str
    function: str
    args_type: Type[A]


PERTURB: Op[PerturbArgs, None] = Op("perturb", "perturb_group", PerturbArgs)
LOWRANK: Op[LowrankArgs, None] = Op("lowrank", "lowrank_update", LowrankArgs)
SKETCH: Op[SketchArgs, List[torch.Tensor]] = Op("sketch", "gaussian_sketch", SketchArgs)
SUBSPACE: Op[SubspaceArgs, None] = Op("subspace", "subspace_update", SubspaceArgs)
OPS: Tuple[Op, ...] = (PERTURB, LOWRANK, SKETCH, SUBSPACE)


def check_name(name: str, source: str) -> str:
    """``name`` if it names a backend, else ValueError naming ``source`` and the choices."""
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


_modules: Dict[str, ModuleType] = {}  # imported backend modules: one dict lookup per op call


def _module(path: str) -> ModuleType:
    module = _modules.get(path)
    if module is None:
        module = _modules[path] = importlib.import_module(path)
    return module


def backend_package(name: str) -> ModuleType:
    """The package ``pgap_kernels.backends.<name>`` (cheap: kernels load on first use)."""
    return _module(f"{__name__}.{check_name(name, 'backend')}")


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """None when backend ``name`` can run on ``device``, else why not."""
    return backend_package(name).unavailable_reason(device)


_op_modules: Dict[Tuple[str, str], ModuleType] = {}  # (backend, op module): one lookup per call


def _op_module(name: str, op: Op) -> ModuleType:
    """Import ``backends/<name>/<op.module>.py`` once, after checking that ``name`` registers
    ``op`` (its ``OPS`` line)."""
    package = backend_package(name)
    if op not in package.OPS:
        raise LookupError(f"pgap_kernels backend {name!r} does not register the op "
                          f"{op.module}.{op.function} (add it to OPS in backends/{name}/__init__.py)")
    module = _op_modules[(name, op.module)] = importlib.import_module(f"{package.__name__}.{op.module}")
    return module


def kernel(name: str, op: Op[A, R]) -> Callable[[A], R]:
    """Backend ``name``'s function for ``op``, its module imported on first use.

    The function is looked up on every call (a test may replace it); LookupError when the backend
    does not register ``op`` or its module lacks the function.
    """
    module = _op_modules.get((name, op.module))
    if module is None:
        module = _op_module(name, op)
    fn = getattr(module, op.function, None)
    if fn is None:
        raise LookupError(f"pgap_kernels backend {name!r}: backends/{name}/{op.module}.py "
                          f"defines no function {op.function}")
    return fn


def device_guard(device: torch.device) -> ContextManager[object]:
    """The one device guard of every launch: ``device`` is torch's current CUDA device inside
    (then the previous one again), so Triton's launches, ``torch.cuda.current_stream()`` and the
    C++ kernels all run on the tensors' device and its current stream, whichever device the
    caller had current. A no-op for CPU tensors."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def call(name: str, op: Op[A, R], device: torch.device, args: A) -> R:
    """Run backend ``name``'s ``op`` on ``args`` (tensors on ``device``), ``device`` current."""
    with device_guard(device):
        return kernel(name, op)(args)
