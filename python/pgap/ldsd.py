"""LDSD (Parfenov, Evseev et al., arXiv 2602.13659): ZO with a learned mean of the direction
distribution, with the score-function update of μ paired with the probes' own draws."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._checks import check_choice, check_int, check_real
from .base import Closure
from .distributed import ProcessGroup
from .params import DecayFilter, Trainable
from .seeded import Combination, SeededZO
from .seeds import group_pass

BASE_CHOICES = ("sgd", "momentum")


class LDSD(SeededZO):
    """Learnable Direction Sampling Descent.

    Directions z = μ + σ·ξ with a learned mean μ per parameter (stored, parameter dtype,
    initialised to 0). Each step, on the current batch:

    1. k one-sided probes f_i = L(θ + ε·z_i), ξ_i from probe seed i (k forwards);
    2. z* = the lowest-loss probe; two-sided estimate along z*, g = (L(θ+εz*) − L(θ−εz*))/(2ε)
       (2 forwards);
    3. θ update with ĝ = g·z*: ``base="sgd"``: θ ← θ − lr·ĝ (fused with the restore);
       ``base="momentum"``: buf ← m·buf + ĝ (buf starts at the first ĝ), θ ← θ − lr·buf (a
       ``perturb_`` with buf as its mean term and no seed);
    4. μ ← μ − lr_mu·(1/(k·σ²))·Σ_i c_i·(z_i − μ) = μ − (lr_mu/(k·σ))·Σ_i c_i·ξ_i with the
       leave-one-out baselines c_i = (k·f_i − Σ_j f_j)/(k − 1), where ξ_i is **exactly** probe i's
       draw, regenerated from its own seed and the parameter's key (the published code's μ update
       uses other draws, which turns it into a random walk). One ``perturb_`` with k seeds.

    Every pass over θ and μ is one ``perturb_`` call with ``mean=μ`` (momentum adds one
    ``perturb_`` into buf). Forwards per step: k + 2.

    Parameters
    ----------
    num_probes : int >= 1 (k, default 5 as the published scripts; k = 1 leaves μ at 0)
    sigma : float > 0 (σ, a standard deviation; default 1.0 as the scripts)
    lr_mu : float >= 0 or None (default: lr, as the published code)
    base : "sgd" or "momentum"; momentum : float in [0, 1) (default 0.9)
    """

    has_mean = True

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, num_probes: int = 5,
                 sigma: float = 1.0, lr_mu: Optional[float] = None, base: str = "sgd",
                 momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
                 eval_mode: bool = True, backend: Optional[str] = None,
                 decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, mode: str = "auto",
                 rounding: str = "stochastic") -> None:
        self.num_probes = check_int(num_probes, "num_probes", low=1)
        self.sigma = check_real(sigma, "sigma", low=0.0, strict=True)
        self.lr_mu = None if lr_mu is None else check_real(lr_mu, "lr_mu", low=0.0)
        self.base = check_choice(base, "base", BASE_CHOICES)
        self.momentum = check_real(momentum, "momentum", low=0.0)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {momentum}")
        super().__init__(model, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed,
                         eval_mode=eval_mode, backend=backend, decay_filter=decay_filter,
                         process_group=process_group, mode=mode, rounding=rounding)
        self.mu: Dict[str, torch.Tensor] = {t.name: torch.zeros_like(t.local, memory_format=torch.contiguous_format)
                                            for t in self.trainables}
        self.buf: Dict[str, torch.Tensor] = ({t.name: torch.zeros_like(t.local) for t in self.trainables}
                                             if self.base == "momentum" else {})
        self._buf_started = False

    def hyperparameters(self):
        return dict(super().hyperparameters(), num_probes=self.num_probes, sigma=self.sigma,
                    lr_mu=self.lr_mu, base=self.base, momentum=self.momentum)

    @property
    def mu_lr(self) -> float:
        return self.lr if self.lr_mu is None else self.lr_mu

    def _means(self, trainables: Sequence[Trainable]) -> List[torch.Tensor]:
        return [self.mu[t.name] for t in trainables]

    # -- the step --------------------------------------------------------------------------
    def _direction(self, closure: Closure) -> Tuple[Combination, Combination]:
        seeds = self.probe_seeds(self.num_probes)
        probes = [Combination.of(s, self.sigma, mean_coeff=1.0) for s in seeds]  # z_i = μ + σ ξ_i
        losses, pending = self.one_sided_probes(closure, probes)
        best = min(range(len(losses)), key=lambda i: (losses[i], i))
        self._probes = (seeds, losses)
        self._diag = {"probe_losses": losses, "best_probe": best}
        return probes[best], pending

    def _update(self, direction: Combination, g: float) -> None:
        if self.base == "sgd":
            super()._update(direction, g)
        else:
            self._momentum_update(direction, g)
        self._update_mu(*self._probes)

    def diagnostics(self) -> Dict[str, Any]:
        """:meth:`ZOOptimizer.diagnostics` plus ‖μ‖ over all parameters (computed on request,
        not every step: it reads all of μ)."""
        norm = torch.linalg.vector_norm(torch.stack([m.float().norm() for m in self.mu.values()]))
        return dict(super().diagnostics(), mu_norm=float(norm))

    def _momentum_update(self, direction: Combination, g: float) -> None:
        if self.views is None:
            self.pass_(direction.scaled(self.eps))  # restore θ
        names = [t.name for t in self.trainables]
        ghat = direction.scaled(g)
        self.perturb(self.trainables, ghat.seeds, ghat.coeffs,
                     decay=self.momentum if self._buf_started else 0.0,
                     means=[self.mu[n] for n in names], mean_coeff=ghat.mean_coeff,
                     into=[self.buf[n] for n in names])
        self._buf_started = True
        for i, (decays, group) in enumerate(self.decay_groups()):  # θ ← decay·θ − lr·buf
            decay = 1.0 - self.lr * self.weight_decay if decays else 1.0
            if self.lr == 0.0 and decay == 1.0:
                continue
            self.perturb(group, [], [], decay=decay, means=[self.buf[t.name] for t in group],
                         mean_coeff=-self.lr, rounding=self.update_rounding(group_pass("update", i)))

    def _update_mu(self, seeds: List[int], losses: List[float]) -> None:
        """μ ← μ − (lr_mu/(k·σ))·Σ_i c_i·ξ_i with leave-one-out c_i, ξ_i = probe i's draws."""
        k = len(losses)
        if k < 2 or self.mu_lr == 0.0:
            return
        total = sum(losses)
        c = [(k * f - total) / (k - 1) for f in losses]
        scale = -self.mu_lr / (k * self.sigma)
        self.perturb(self.trainables, seeds, [scale * ci for ci in c],
                     into=[self.mu[t.name] for t in self.trainables])

    # -- state -----------------------------------------------------------------------------
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        out = {f"mu.{n}": v for n, v in self.mu.items()}
        out.update({f"momentum.{n}": v for n, v in self.buf.items()})
        return out

    def _load_state_tensors(self, tensors: Dict[str, torch.Tensor]) -> None:
        want = self._state_tensors()
        if set(tensors) != set(want):
            raise ValueError(f"state tensors differ from this optimizer's: "
                             f"{sorted(set(tensors) ^ set(want))[:5]}")
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(want[k].shape):
                raise ValueError(f"state tensor {k!r} has shape {tuple(v.shape)}; expected "
                                 f"{tuple(want[k].shape)}")
        with torch.no_grad():
            for k, v in tensors.items():
                want[k].copy_(v)

    def _extra_state(self):
        return dict(super()._extra_state(), buf_started=self._buf_started)

    def _load_extra_state(self, extra) -> None:
        super()._load_extra_state(extra)
        self._buf_started = bool(extra.get("buf_started", False))
