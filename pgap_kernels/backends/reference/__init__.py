"""Pure-PyTorch backend: the test oracle, the CPU fallback and the benchmark baseline."""
from typing import Optional

import torch

from .. import LOWRANK, PERTURB, SKETCH, SUBSPACE

OPS = (PERTURB, LOWRANK, SKETCH, SUBSPACE)  # the registry line: one module per op here


def unavailable_reason(device: torch.device) -> Optional[str]:
    return None  # integer tensor arithmetic runs on any device
