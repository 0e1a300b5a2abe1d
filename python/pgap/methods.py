"""Building any pgap optimizer by name (the command line and the Trainer use this)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

from .agzo import AGZO
from .base import ZOOptimizer
from .guided import MeZOGreedy, MeZOGV
from .ldsd import LDSD
from .mezo import MeZO
from .pgap_optimizer import PGAP

METHODS = {"mezo": MeZO, "pgap": PGAP, "mezo-gv": MeZOGV, "mezo-greedy": MeZOGreedy, "ldsd": LDSD,
           "agzo": AGZO}


def build_optimizer(method: str, model: nn.Module, *, lr: float, eps: float, seed: int,
                    backend: Optional[str] = None, **options: Any) -> ZOOptimizer:
    """``METHODS[method](model, lr=..., eps=..., seed=..., backend=..., **options)``; options
    that are None are left at the optimizer's default."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    kwargs: Dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    return METHODS[method](model, lr=lr, eps=eps, seed=seed, backend=backend, **kwargs)
