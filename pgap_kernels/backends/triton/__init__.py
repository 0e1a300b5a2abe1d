"""Triton backend: GPU kernels, also runnable on the CPU under ``TRITON_INTERPRET=1``."""
import importlib.util
import os
from typing import Optional

import torch

import pgap_kernels.backends as registry

# The registry line: the ops this backend implements, one module each (backends/<name>/<op>.py).
OPS = (registry.PERTURB, registry.LOWRANK, registry.SKETCH, registry.SUBSPACE)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(device: torch.device) -> Optional[str]:
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return "triton is not installed (pip install 'pgap-kernels[triton]')"
    if device.type == "cpu":
        if not interpreting():
            return "triton runs on the CPU only in interpreter mode: set TRITON_INTERPRET=1"
        return None
    if device.type != "cuda":
        return f"triton does not run on {device.type}"
    if interpreting():
        return "TRITON_INTERPRET=1 is set: the interpreter runs on CPU tensors only"
    if not torch.cuda.is_available():
        return "torch reports no usable CUDA device"
    return None
