"""MeZO (Malladi et al., 2023) on fused passes: three passes over the weights per step."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

import pgap_kernels

from .base import Closure, ZOOptimizer
from .params import DecayFilter, Trainable


class MeZO(ZOOptimizer):
    """Memory-efficient ZO-SGD with a two-point Gaussian estimate.

    Each step, with z regenerated from ``(step seed, FNV-1a key of the name, element index)``:
    ``perturb_(+ε)``, forward L+, ``perturb_(−2ε)``, forward L−, g = (L+ − L−)/(2ε), then one pass
    that restores, decays and updates: θ ← (1 − lr·wd)·θ − lr·g·z. Weight decay skips biases and
    normalisation weights (``decay_filter`` changes that).

    Parameters
    ----------
    model : nn.Module whose ``requires_grad=True`` parameters (float32/bf16/fp16, one device) are
        tuned in place.
    lr : float >= 0; eps : float > 0; weight_decay : float >= 0; seed : int in [0, 2**64)
    eval_mode : run the closure with the model in eval mode (dropout off), as MeZO does.
    backend : force a pgap_kernels backend ("reference", "native", "cuda", "triton") or None.
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, weight_decay: float = 0.0,
                 seed: int = 0, eval_mode: bool = True, backend: Optional[str] = None,
                 decay_filter: Optional[DecayFilter] = None) -> None:
        super().__init__(model, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed,
                         eval_mode=eval_mode, backend=backend, decay_filter=decay_filter)

    def _perturb(self, trainables: List[Trainable], seed: int, coeff: float, decay: float = 1.0) -> None:
        if trainables:
            pgap_kernels.perturb_([t.param for t in trainables], seed, coeff,
                                  keys=[t.key for t in trainables], decay=decay)

    def _decay_groups(self) -> List[Tuple[bool, List[Trainable]]]:
        if self.weight_decay == 0.0:
            return [(False, self.trainables)]
        return [(flag, [t for t in self.trainables if t.decays == flag]) for flag in (True, False)]

    def _step(self, closure: Closure) -> float:
        seed = self.step_seed()
        plus, minus = self.two_point(closure, lambda c: self._perturb(self.trainables, seed, c),
                                     self.eps)
        g = (plus - minus) / (2.0 * self.eps)
        for decays, group in self._decay_groups():
            decay, coeff = self.restore_update(g, decays)
            self._perturb(group, seed, coeff, decay)
        self._diag = {"loss_plus": plus, "loss_minus": minus, "projected_grad": g}
        return 0.5 * (plus + minus)

    def last_direction(self) -> Dict[str, torch.Tensor]:
        seed = self.step_seed(self.steps_done - 1)
        with self._kernels():
            return {t.name: pgap_kernels.gaussian(tuple(t.param.shape), seed, key=t.key,
                                                  device=t.param.device)
                    for t in self.trainables}
