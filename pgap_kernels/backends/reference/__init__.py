"""Pure-PyTorch backend: the test oracle, the CPU fallback and the benchmark baseline."""
from typing import Optional

import torch


def unavailable_reason(device: torch.device) -> Optional[str]:
    return None  # integer tensor arithmetic runs on any device
