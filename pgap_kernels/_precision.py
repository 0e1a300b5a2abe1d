"""IEEE float32 matrix products whatever the process-wide TF32 / matmul-precision setting.

Training scripts often set ``torch.set_float32_matmul_precision("high")`` or
``torch.backends.cuda.matmul.fp32_precision = "tf32"``: float32 matmuls then run in TF32 on
NVIDIA GPUs (about 5e-4 relative error) and may run in bf16 through oneDNN on CPUs with
``"medium"``. The float32 products inside pgap_kernels (the reference backend, the low-rank
factors) are documented as float32 accumulation and are the oracle of every other backend, so
they run under :func:`ieee_float32`, which sets both backends' ``fp32_precision`` to ``"ieee"``
for the block and restores the user's values afterwards (through the per-backend API, which
never raises on a process that mixed the legacy and the new API).

Not thread safe: like the settings themselves, it is process-wide while the block runs.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

import torch


def _precision_modules() -> List[object]:
    """The per-backend matmul settings that this torch has (cuda, mkldnn)."""
    mods = []
    for backend in (torch.backends.cuda, torch.backends.mkldnn):
        mod = getattr(backend, "matmul", None)
        if mod is not None and hasattr(mod, "fp32_precision"):
            mods.append(mod)
    return mods


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Context manager, also usable as a decorator (``@ieee_float32()``): float32 matmuls inside
    run in IEEE float32 (no TF32, no bf16) on CPU and CUDA; the user's settings come back on
    exit, also on an exception."""
    saved: List[Tuple[object, str]] = [(m, m.fp32_precision) for m in _precision_modules()]
    changed = [(m, value) for m, value in saved if value != "ieee"]
    for m, _ in changed:
        m.fp32_precision = "ieee"
    try:
        yield
    finally:
        for m, value in changed:
            m.fp32_precision = value
