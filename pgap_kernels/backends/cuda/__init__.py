"""CUDA C++ backend over ``pgap_kernels._C`` (kernels share csrc/include/pgap with native)."""
from typing import Optional

import torch

from ... import _native
import pgap_kernels.backends as registry

# The registry line: the ops this backend implements, one module each (backends/<name>/<op>.py).
OPS = (registry.PERTURB, registry.LOWRANK, registry.SKETCH, registry.SUBSPACE)


def unavailable_reason(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return f"the cuda backend runs on CUDA devices only, not on {device.type}"
    lib, reason = _native.load()
    if lib is None:
        return reason
    if not hasattr(lib, "cuda_perturb"):
        return ("pgap_kernels._C was built without its CUDA kernels (nvcc not found at build time, "
                f"or PGAP_BUILD_CUDA=0); {_native.REBUILD_HINT} on a machine with nvcc")
    if not torch.cuda.is_available():
        return "torch reports no usable CUDA device"
    return None
