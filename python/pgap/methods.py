"""Building any pgap optimizer by name (the command line and the Trainer use this)."""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional

from torch import nn

from .agzo import AGZO
from .base import ZOOptimizer
from .firstorder import FIRST_ORDER
from .guided import MeZOGreedy, MeZOGV
from .ldsd import LDSD
from .mezo import MeZO
from .pgap_optimizer import PGAP
from .subzero import SubZero

METHODS = {"mezo": MeZO, "pgap": PGAP, "mezo-gv": MeZOGV, "mezo-greedy": MeZOGreedy, "ldsd": LDSD,
           "agzo": AGZO, "subzero": SubZero}
# The first-order baselines (backprop; pgap.firstorder) next to the ZO methods: pgap-finetune and
# bench_compare train any of these; ZOTrainer takes the ZO methods only.
ALL_METHODS = {**METHODS, **FIRST_ORDER}
# Arguments every method takes that build_optimizer passes itself (not "options").
COMMON_ARGUMENTS = ("model", "lr", "eps", "seed", "backend")


def check_method(method: str) -> type:
    """The optimizer class of ``method``; ValueError listing the methods when it is unknown."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def option_names(method: str) -> List[str]:
    """The names of ``method``'s own options: the keyword arguments of its optimizer beyond
    ``COMMON_ARGUMENTS``, in signature order."""
    params = inspect.signature(check_method(method).__init__).parameters
    return [n for n, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in COMMON_ARGUMENTS]


def build_optimizer(method: str, model: nn.Module, *, lr: float, eps: float, seed: int,
                    backend: Optional[str] = None, **options: Any) -> ZOOptimizer:
    """``ALL_METHODS[method](model, lr=..., eps=..., seed=..., backend=..., **options)`` (a ZO
    method or a first-order baseline); options that are None are left at the optimizer's
    default."""
    cls = FIRST_ORDER.get(method) or check_method(method)
    kwargs: Dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    return cls(model, lr=lr, eps=eps, seed=seed, backend=backend, **kwargs)
