"""The trainable parameters a ZO optimizer tunes: names, stream keys and weight-decay flags."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn

from .seeds import fnv1a32

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

DecayFilter = Callable[[str, torch.Tensor], bool]


@dataclass(frozen=True)
class Trainable:
    """One trainable parameter: qualified ``name``, the tensor, its stream ``key`` (FNV-1a of the
    name) and whether weight decay applies to it."""
    name: str
    param: torch.Tensor
    key: int
    decays: bool

    @property
    def is_matrix(self) -> bool:
        return self.param.dim() == 2


def default_decay_filter(name: str, param: torch.Tensor) -> bool:
    """MeZO's rule: no weight decay on biases and normalisation weights (any parameter that is not
    at least 2-D, or whose name contains "bias" or "norm")."""
    lowered = name.lower()
    return param.dim() >= 2 and "bias" not in lowered and "norm" not in lowered


def collect_trainable(model: nn.Module, decay_filter: Optional[DecayFilter] = None) -> List[Trainable]:
    """Parameters of ``model`` with ``requires_grad=True`` in ``named_parameters`` order (tied
    parameters once, under their first name).

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or a parameter has an unsupported dtype.
    ValueError
        If there is no trainable parameter, a parameter is not contiguous, the parameters are on
        more than one device, or two names hash to the same key.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    decay_filter = decay_filter or default_decay_filter
    found: List[Trainable] = []
    seen_keys = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"parameter {name!r} has dtype {p.dtype}; expected float32, bfloat16 "
                            "or float16 (freeze it with requires_grad_(False) to leave it out)")
        if not p.is_contiguous():
            raise ValueError(f"parameter {name!r} is not contiguous; call .data = p.contiguous() "
                             "before building the optimizer")
        key = fnv1a32(name)
        if key in seen_keys:
            raise ValueError(f"parameters {seen_keys[key]!r} and {name!r} hash to the same stream "
                             "key; rename one of them")
        seen_keys[key] = name
        found.append(Trainable(name, p, key, bool(decay_filter(name, p))))
    if not found:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    devices = {t.param.device for t in found}
    if len(devices) > 1:
        raise ValueError(f"trainable parameters lie on several devices {sorted(map(str, devices))}; "
                         "pgap optimizers need them on one device")
    return found
