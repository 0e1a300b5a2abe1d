"""The seeds and fused passes of a ZO step: which stream seeds a step draws, one ``perturb_`` over
a set of trainables, the rounding of each named update pass, and the coefficients of the pass
that restores and updates in one go."""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch

import pgap_kernels

from .params import Trainable
from .seeds import PROBE_STREAM, STEP_STREAM, RoundingPasses, derive_seed


class SeededPasses:
    """Mixed into :class:`pgap.ZOOptimizer`; uses its ``seed``, ``steps_done``, ``eps``, ``lr``,
    ``weight_decay``, ``rounding``, ``low_precision`` and ``distribution``."""

    rounding_passes: ClassVar[RoundingPasses] = RoundingPasses()  # subclasses name their passes
    # the stream of the full-dimensional z (pgap_kernels.STREAM_VERSIONS): MeZO-family optimizers
    # take it as an option; low-rank factors and bases always draw the Gaussian stream
    distribution: str = "gaussian"

    def step_seed(self, step: Optional[int] = None) -> int:
        """Seed of the direction of ``step`` (default: the next step)."""
        return derive_seed(self.seed, self.steps_done if step is None else step, STEP_STREAM)

    def probe_seeds(self, count: int) -> List[int]:
        """Seeds of this step's probes: ``derive_seed(seed, step, 1 + i)``, i < count."""
        return [derive_seed(self.seed, self.steps_done, PROBE_STREAM + i) for i in range(count)]

    def perturb(self, trainables: Sequence[Trainable], seeds: Sequence[int], coeffs: Sequence[float],
                *, decay: float = 1.0, means: Optional[List[torch.Tensor]] = None,
                mean_coeff: float = 0.0, into: Optional[List[torch.Tensor]] = None,
                rounding: Optional[Dict[str, Any]] = None) -> None:
        """θ ← decay·θ + mean_coeff·μ + Σ_j coeffs[j]·z(seeds[j]) over ``trainables`` (local
        shards, at their global offsets), one ``perturb_`` call. ``into``: tensors shaped like
        the local shards (μ, a momentum buffer, a direction) written instead of the parameters,
        with the parameters' keys and offsets. ``rounding``: from :meth:`update_rounding`."""
        if trainables:
            targets = [t.local for t in trainables] if into is None else into
            pgap_kernels.perturb_(targets, list(seeds), list(coeffs),
                                  keys=[t.key for t in trainables],
                                  offsets=[t.offset for t in trainables], decay=decay, mean=means,
                                  mean_coeff=mean_coeff if means is not None else 0.0,
                                  distribution=self.distribution, **(rounding or {}))

    def update_rounding(self, name: str) -> Dict[str, Any]:
        """Keyword arguments of the kernels for update pass ``name`` (one of
        :attr:`rounding_passes`) of this step: stochastic rounding into bf16/fp16 weights
        (``rounding="stochastic"``, the default) with that pass's own seed, or {} (nearest)."""
        if self.rounding != "stochastic" or not self.low_precision:
            return {}
        return {"rounding": "stochastic",
                "rounding_seed": self.rounding_passes.seed(self.seed, self.steps_done, name)}

    def restore_update(self, projected_grad: float, decays: bool, lr_scale: float = 1.0,
                       carried: Optional[float] = None) -> Tuple[float, float]:
        """(decay, coeff) of the pass that takes θ − carried·P (default carried = ε: the weights
        after the two-point pair in place; 0 when they never held it) to decay·θ − lr·g·P
        (lr = the current lr times ``lr_scale``): decay = 1 − lr·wd (1 where weight decay does
        not apply), coeff = decay·carried − lr·g."""
        lr = self.lr * lr_scale
        decay = 1.0 - lr * self.weight_decay if decays else 1.0
        carried = self.eps if carried is None else carried
        return decay, decay * carried - lr * projected_grad
