"""MeZO (Malladi et al., 2023) on fused passes: three passes over the weights per step."""
from __future__ import annotations

from typing import Optional, Tuple

from torch import nn

from .base import Closure
from .distributed import ProcessGroup
from .params import DecayFilter
from .seeded import Combination, SeededZO


class MeZO(SeededZO):
    """Memory-efficient ZO-SGD with a two-point estimate along a seeded Gaussian (or Rademacher) z.

    Each step, with z regenerated from ``(step seed, FNV-1a key of the name, element index)``:
    ``perturb_(+ε)``, forward L+, ``perturb_(−2ε)``, forward L−, g = (L+ − L−)/(2ε), then one pass
    that restores, decays and updates: θ ← (1 − lr·wd)·θ − lr·g·z. Weight decay follows
    :func:`pgap.pgap_decay_rule` (skips parameters below 2-D and names containing "bias" or
    "norm"); ``decay_filter=pgap.mezo_decay_rule`` is MeZO's own rule, any
    ``(name, param) -> bool`` another.

    Parameters
    ----------
    model : nn.Module whose ``requires_grad=True`` parameters (float32/bf16/fp16, one device) are
        tuned in place.
    lr : float >= 0; eps : float > 0; weight_decay : float >= 0; seed : int in [0, 2**64)
    eval_mode : run the closure with the model in eval mode (dropout off), as MeZO does.
    backend : force a pgap_kernels backend ("reference", "native", "cuda", "triton") or None.
    process_group : torch.distributed group whose ranks share each loss (default: the default
        group when initialized; see docs/distributed.md).
    mode : "auto" (default: "functional" for bf16/fp16 weights, else "inplace"), "inplace" (the
        three passes above) or "functional" (the forwards see ``pgap_kernels.perturbed`` copies
        of θ ± ε·z, module by module; the weights receive only the update, in one pass, and never
        hold a perturbation; not for FSDP2-sharded parameters).
    rounding : "stochastic" (default: updates round into bf16/fp16 weights stochastically,
        unbiased, with a seed derived from (seed, step); docs/rng.md) or "nearest".
    distribution : "gaussian" (default: z ~ N(0, I), MeZO's) or "rademacher" (z = ±1 per element,
        SPSA's: the same E[z·zᵀ] = I, so the same lr; its stream costs one Philox block per 128
        elements instead of Box–Muller per 2, so the passes run at memory speed; docs/rng.md).
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, weight_decay: float = 0.0,
                 seed: int = 0, eval_mode: bool = True, backend: Optional[str] = None,
                 decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, mode: str = "auto",
                 rounding: str = "stochastic", distribution: str = "gaussian") -> None:
        super().__init__(model, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed,
                         eval_mode=eval_mode, backend=backend, decay_filter=decay_filter,
                         process_group=process_group, mode=mode, rounding=rounding,
                         distribution=distribution)

    def _direction(self, closure: Closure) -> Tuple[Combination, None]:
        self._diag = {}
        return Combination.of(self.step_seed()), None
