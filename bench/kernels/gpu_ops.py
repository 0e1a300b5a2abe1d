"""One representative call of every public op on a CUDA device, for the GPU-path checks.

Used by ``bench/kernels/host_overhead.py`` (host time per op while the GPU is busy) and by
``tests/kernels/test_gpu_paths.py`` (CUDA-graph capture and replay, ops on a second GPU). Each case makes
its inputs on a device and runs the op on them; ``run`` returns the tensors it wrote or made, so
a caller can compare one way of running against another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

import torch

import pgap_kernels as pk

Inputs = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class OpCase:
    name: str
    make: Callable[[torch.device, bool], Inputs]  # (device, small): small = tiny shapes
    run: Callable[[Inputs], List[torch.Tensor]]


def _randn(shape, seed: int, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


def _perturb_inputs(device: torch.device, small: bool = False) -> Inputs:
    a, b = ((10, 13), 97) if small else ((1000, 1003), 4097)
    return {"a": _randn(a, 1, device), "b": _randn(b, 2, device, torch.bfloat16),
            "mean_a": _randn(a, 3, device), "mean_b": _randn(b, 4, device, torch.bfloat16)}


def _perturb(x: Inputs) -> List[torch.Tensor]:
    pk.perturb_([x["a"], x["b"]], [11, 12], [1e-3, -2e-3], keys=[5, 6], offsets=[0, 7], decay=0.99,
                mean=[x["mean_a"], x["mean_b"]], mean_coeff=0.5, rounding="stochastic",
                rounding_seed=99)
    return [x["a"], x["b"]]


def _perturbed_inputs(device: torch.device, small: bool = False) -> Inputs:
    shape = (7, 13) if small else (777, 513)
    return {"w": _randn(shape, 5, device, torch.bfloat16),
            "out": torch.empty(shape, dtype=torch.bfloat16, device=device)}


def _perturbed(x: Inputs) -> List[torch.Tensor]:
    return [pk.perturbed(x["w"], 21, 1e-2, key=3, offset=1, out=x["out"])]


def _lowrank_inputs(device: torch.device, small: bool = False) -> Inputs:
    m, n = (10, 30) if small else (1000, 3000)
    return {"W": _randn((m, n), 6, device), "U": _randn((m, 8), 7, device),
            "Z": _randn((8, 8), 8, device), "V": _randn((n, 8), 9, device)}


def _lowrank(x: Inputs) -> List[torch.Tensor]:
    pk.lowrank_perturb_(x["W"], x["U"], x["Z"], x["V"], 1e-2, decay=0.9)
    return [x["W"]]


def _subspace_inputs(device: torch.device, small: bool = False) -> Inputs:
    m, n = (15, 6) if small else (1536, 576)
    return {"w1": _randn((m, n), 10, device, torch.bfloat16), "v1": _randn((n, 8), 11, device),
            "w2": _randn((n, n), 12, device), "v2": _randn((n, 4), 13, device)}


def _subspace(x: Inputs) -> List[torch.Tensor]:
    pk.subspace_perturb_([x["w1"], x["w2"]], [x["v1"], x["v2"]], [31, 32], [1e-3, 1e-3],
                         keys=[1, 2], decay=0.999, rounding="stochastic", rounding_seed=7)
    return [x["w1"], x["w2"]]


def _sketch_inputs(device: torch.device, small: bool = False) -> Inputs:
    return {"omega": _randn((30 if small else 3000, 16), 14, device)}


def _sketch(x: Inputs) -> List[torch.Tensor]:
    n = x["omega"].shape[0]
    return [pk.gaussian_sketch(n // 3, n, [41, 42], [1.0, -0.5], x["omega"], key=4, offset=3)]


OP_CASES: List[OpCase] = [
    OpCase("perturb_", _perturb_inputs, _perturb),
    OpCase("perturbed", _perturbed_inputs, _perturbed),
    OpCase("lowrank_perturb_", _lowrank_inputs, _lowrank),
    OpCase("subspace_perturb_", _subspace_inputs, _subspace),
    OpCase("gaussian_sketch", _sketch_inputs, _sketch),
]
