"""Prior-guided ZO (Jin, Cen & Tan, arXiv 2601.04710): MeZO-GV and MeZO-Greedy, as the paper
describes them (not as the released code behaves; see docs/guided.md)."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from torch import nn

from ._checks import check_int, check_real
from .base import Closure
from .distributed import ProcessGroup
from .params import DecayFilter
from .seeded import Combination, SeededZO


class _Probing(SeededZO):
    """M one-sided probes L(θ + ε·z_i) on the current batch, z_i from their own seeds."""

    def __init__(self, model: nn.Module, *, lr: float, eps: float, num_probes: int,
                 min_probes: int, weight_decay: float, seed: int, eval_mode: bool,
                 backend: Optional[str], decay_filter: Optional[DecayFilter],
                 process_group: Optional[ProcessGroup], mode: str, rounding: str,
                 distribution: str) -> None:
        self.num_probes = check_int(num_probes, "num_probes", low=min_probes)
        super().__init__(model, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed,
                         eval_mode=eval_mode, backend=backend, decay_filter=decay_filter,
                         process_group=process_group, mode=mode, rounding=rounding,
                         distribution=distribution)

    def hyperparameters(self):
        return dict(super().hyperparameters(), num_probes=self.num_probes)

    def _probe(self, closure: Closure) -> Tuple[List[int], List[float], Combination]:
        seeds = self.probe_seeds(self.num_probes)
        losses, pending = self.one_sided_probes(closure, [Combination.of(s) for s in seeds])
        self._diag = {"probe_losses": losses}
        return seeds, losses, pending


class MeZOGV(_Probing):
    """MeZO-GV: a guiding vector from the contrast of low- and high-loss probes.

    Each step: M one-sided probes L(θ + ε·z_i) (z_i ~ N(0, I) from seed i of the step), sorted by
    loss; v = mean of the best ⌊α·M⌋ z_i − mean of the other M − ⌊α·M⌋ (the paper's Eq. 5); then
    a two-sided estimate along v and θ ← θ − lr·g·v. v is never stored: each pass is one
    ``perturb_`` with the M seeds and their coefficients. Forwards per step: M + 2.

    Parameters
    ----------
    num_probes : int >= 2 (M, default 4 as in the paper's grid)
    top_frac : float in (0, 1) (α, default 0.5); ⌊α·M⌋ must be in [1, M − 1]
    normalize : bool (default False, the paper's v). True divides v by sqrt(Σ w_i²) so that
        its entries have unit variance like a MeZO z for any M and α; at the defaults M = 4,
        α = 0.5, Σ w_i² = 1 and both are the same.
    distribution : "gaussian" (default) or "rademacher": the probes' z_i, as :class:`pgap.MeZO`'s.
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, num_probes: int = 4,
                 top_frac: float = 0.5, normalize: bool = False, weight_decay: float = 0.0,
                 seed: int = 0, eval_mode: bool = True, backend: Optional[str] = None,
                 decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, mode: str = "auto",
                 rounding: str = "stochastic", distribution: str = "gaussian") -> None:
        self.top_frac = check_real(top_frac, "top_frac", low=0.0, strict=True)
        if self.top_frac >= 1.0:
            raise ValueError(f"top_frac must be < 1, got {top_frac}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        self.normalize = normalize
        super().__init__(model, lr=lr, eps=eps, num_probes=num_probes, min_probes=2,
                         weight_decay=weight_decay, seed=seed, eval_mode=eval_mode,
                         backend=backend, decay_filter=decay_filter,
                         process_group=process_group, mode=mode, rounding=rounding,
                         distribution=distribution)
        top = math.floor(self.top_frac * self.num_probes)
        if not 1 <= top <= self.num_probes - 1:
            raise ValueError(f"floor(top_frac * num_probes) = {top} must be in [1, num_probes - 1]; "
                             f"got top_frac={top_frac}, num_probes={num_probes}")
        self.num_top = top

    def hyperparameters(self):
        return dict(super().hyperparameters(), top_frac=self.top_frac, normalize=self.normalize)

    def guiding_weights(self, losses: List[float]) -> List[float]:
        """w_i of v = Σ w_i·z_i: +1/|top| for the ⌊α·M⌋ lowest losses, −1/|rest| otherwise
        (ties broken by probe index), optionally normalised to Σ w_i² = 1."""
        order = sorted(range(len(losses)), key=lambda i: (losses[i], i))
        top, rest = self.num_top, len(losses) - self.num_top
        w = [0.0] * len(losses)
        for rank, i in enumerate(order):
            w[i] = 1.0 / top if rank < top else -1.0 / rest
        if self.normalize:
            norm = math.sqrt(sum(a * a for a in w))
            w = [a / norm for a in w]
        return w

    def _direction(self, closure: Closure) -> Tuple[Combination, Combination]:
        seeds, losses, pending = self._probe(closure)
        return Combination(tuple(seeds), tuple(self.guiding_weights(losses))), pending


class MeZOGreedy(_Probing):
    """MeZO-Greedy: z* = the lowest-loss of M one-sided probes, then the two-sided estimate along
    z* (re-evaluated, as the paper's Alg. 3) and θ ← θ − lr·g·z*. Forwards per step: M + 2.

    Parameters
    ----------
    num_probes : int >= 1 (M, default 4); M = 1 is MeZO with one extra forward.
    distribution : "gaussian" (default) or "rademacher": the probes' z_i, as :class:`pgap.MeZO`'s.
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, num_probes: int = 4,
                 weight_decay: float = 0.0, seed: int = 0, eval_mode: bool = True,
                 backend: Optional[str] = None, decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, mode: str = "auto",
                 rounding: str = "stochastic", distribution: str = "gaussian") -> None:
        super().__init__(model, lr=lr, eps=eps, num_probes=num_probes, min_probes=1,
                         weight_decay=weight_decay, seed=seed, eval_mode=eval_mode,
                         backend=backend, decay_filter=decay_filter,
                         process_group=process_group, mode=mode, rounding=rounding,
                         distribution=distribution)

    def _direction(self, closure: Closure) -> Tuple[Combination, Combination]:
        seeds, losses, pending = self._probe(closure)
        best = min(range(len(losses)), key=lambda i: (losses[i], i))
        self._diag["best_probe"] = best
        return Combination.of(seeds[best]), pending
