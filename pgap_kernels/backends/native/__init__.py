"""C++ host backend (OpenMP + SIMD, CPU-feature dispatch) over ``pgap_kernels._C``."""
from typing import Optional

import torch

from ... import _native
import pgap_kernels.backends as registry

# The registry line: the ops this backend implements, one module each (backends/<name>/<op>.py).
OPS = (registry.PERTURB, registry.LOWRANK, registry.SKETCH, registry.SUBSPACE)


def unavailable_reason(device: torch.device) -> Optional[str]:
    if device.type != "cpu":
        return f"the native backend runs on the CPU only, not on {device.type}"
    _, reason = _native.load()
    return reason or None
