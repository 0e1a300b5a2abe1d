"""Pure-PyTorch backend: the test oracle, the CPU fallback and the benchmark baseline."""
from typing import Optional

import torch

import pgap_kernels.backends as registry

# The registry line: the ops this backend implements, one module each (backends/<name>/<op>.py).
OPS = (registry.PERTURB, registry.LOWRANK, registry.SKETCH, registry.SUBSPACE)


def unavailable_reason(device: torch.device) -> Optional[str]:
    return None  # integer tensor arithmetic runs on any device
