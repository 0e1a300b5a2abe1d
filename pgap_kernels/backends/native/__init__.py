"""C++ host backend (OpenMP + SIMD, CPU-feature dispatch) over ``pgap_kernels._C``."""
from typing import Optional

import torch

from ... import _native
from .. import LOWRANK, PERTURB, SKETCH, SUBSPACE

OPS = (PERTURB, LOWRANK, SKETCH, SUBSPACE)  # the registry line: one module per op here


def unavailable_reason(device: torch.device) -> Optional[str]:
    if device.type != "cpu":
        return f"the native backend runs on the CPU only, not on {device.type}"
    _, reason = _native.load()
    return reason or None
