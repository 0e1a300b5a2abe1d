"""SeededZO: optimizers whose directions are combinations of stream directions (and a mean).

A direction is ``d = mean_coeff·μ + Σ_j coeffs[j]·z(seeds[j])`` over every trainable parameter,
where z(s) is the stream Gaussian of seed s keyed by the parameter's name (or, with
``distribution="rademacher"``, the stream's ±1 signs: docs/rng.md) and μ an optional stored
mean (LDSD). Every pass over the weights is then one ``perturb_`` call with those seeds and
coefficients; passes that follow each other are fused (e.g. the restore of the last probe with
the +ε of the estimate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import pgap_kernels

from ._checks import check_choice
from .base import Closure, ZOOptimizer
from .params import Trainable, resolve_mode
from .seeds import SEEDED_PASSES, group_pass
from .views import PAIR_COPIES, Views


@dataclass(frozen=True)
class Combination:
    """``mean_coeff·μ + Σ_j coeffs[j]·z(seeds[j])`` (seeds distinct)."""
    seeds: Tuple[int, ...]
    coeffs: Tuple[float, ...]
    mean_coeff: float = 0.0

    @staticmethod
    def of(seed: int, coeff: float = 1.0, mean_coeff: float = 0.0) -> "Combination":
        return Combination((seed,), (coeff,), mean_coeff)

    def scaled(self, c: float) -> "Combination":
        return Combination(self.seeds, tuple(c * a for a in self.coeffs), c * self.mean_coeff)

    def __add__(self, other: "Combination") -> "Combination":
        merged: Dict[int, float] = dict(zip(self.seeds, self.coeffs))
        for s, a in zip(other.seeds, other.coeffs):
            merged[s] = merged.get(s, 0.0) + a
        return Combination(tuple(merged), tuple(merged.values()), self.mean_coeff + other.mean_coeff)


class SeededZO(ZOOptimizer):
    """Two-point ZO along a :class:`Combination`, with fused passes. Subclasses choose the
    direction in ``_direction(closure)``, which may run probes and return a pending
    combination (what the weights still carry from the probes) to fuse into the first pass.

    ``mode="inplace"`` writes θ ± ε·d into the weights for the forwards (three passes per step);
    ``mode="functional"`` never does: the forwards see ``pgap_kernels.perturbed`` copies, module by
    module (:class:`pgap.views.PerturbedViews`), and the weights receive only the update (one
    pass). ``"auto"`` (default) is functional for bf16/fp16 weights, in place for float32.
    """

    has_mean = False  # directions with a stored mean μ (LDSD): _means returns tensors
    rounding_passes = SEEDED_PASSES

    def __init__(self, model: nn.Module, *, mode: str = "auto", distribution: str = "gaussian",
                 **kwargs) -> None:
        distribution = check_choice(distribution, "distribution", pgap_kernels.STREAM_VERSIONS)
        if distribution != "gaussian" and self.has_mean:
            raise ValueError(f"distribution={distribution!r}: {type(self).__name__}'s directions are "
                             "Gaussian by construction (a mean and a scale); use 'gaussian'")
        super().__init__(model, **kwargs)
        self.distribution = distribution
        self._last: Optional[Combination] = None  # the last step's direction (diagnostics, state)
        self.mode = resolve_mode(mode, self.trainables, sharded_ok=not self.has_mean)
        self.views: Optional[Views] = None  # functional mode: what the forwards see
        if self.mode == "functional":
            self.views = self.attach(Views(model, self.trainables,
                                           means=self._mean_of if self.has_mean else None,
                                           distribution=distribution))

    def hyperparameters(self):
        return dict(super().hyperparameters(), mode=self.mode, distribution=self.distribution)

    @property
    def pair_copies(self) -> str:
        """How a paired step makes the θ − ε·d copies (functional mode): "draw" (the kernels again
        with −ε·d, the numbers the unpaired step shows), "mirror" (2θ − (θ + ε·d), one elementwise
        pass, no second draw of d: θ − ε·d to float32 rounding for float32 weights; for bf16
        weights a different estimate, measured far from the unpaired one on SmolLM2) or "auto"
        (default: mirror for float32 parameters, draw for bf16/fp16 ones). Settable; see
        docs/optimizers.md, "Paired forwards"."""
        return self.views.pair_copies if self.views is not None else "auto"

    @pair_copies.setter
    def pair_copies(self, value: str) -> None:
        value = check_choice(value, "pair_copies", PAIR_COPIES)
        if self.views is None:
            raise ValueError("pair_copies applies to mode='functional' (paired forwards) only")
        self.views.pair_copies = value

    @property
    def supports_pairs(self) -> bool:  # type: ignore[override]
        """Paired forwards (``step(closure, pair_closure=...)``) need the functional mode (not on
        FSDP2-sharded parameters)."""
        return self.views is not None and self.views.unit == "block"

    def _mean_of(self, t: Trainable) -> Optional[torch.Tensor]:
        means = self._means([t])
        return None if means is None else means[0]

    def show(self, combo: Optional[Combination]) -> None:
        """Functional mode: the next forwards see θ + combo (θ when None)."""
        if combo is None:
            self.views.hide()
        else:
            self.views.show(combo.seeds, combo.coeffs, combo.mean_coeff)

    @property
    def carried(self) -> float:
        """How much of −d the weights hold after the two-point pair: ε in place, 0 with views."""
        return 0.0 if self.views is not None else self.eps

    # -- passes ----------------------------------------------------------------------------
    def _means(self, trainables: Sequence[Trainable]) -> Optional[List[torch.Tensor]]:
        """The mean tensors μ of ``trainables`` (None: this optimizer has no mean)."""
        return None

    def pass_(self, combo: Combination, decay: float = 1.0,
              trainables: Optional[Sequence[Trainable]] = None, rounding=None) -> None:
        """θ ← decay·θ + combo, one ``perturb_`` over ``trainables`` (default: all)."""
        group = list(self.trainables if trainables is None else trainables)
        if not group:
            return
        means = self._means(group) if combo.mean_coeff != 0.0 else None
        self.perturb(group, combo.seeds, combo.coeffs, decay=decay, means=means,
                     mean_coeff=combo.mean_coeff, rounding=rounding)

    def decay_groups(self) -> List[Tuple[bool, List[Trainable]]]:
        """[(decays, trainables)]: one group without weight decay, else decayed / not decayed."""
        if self.weight_decay == 0.0:
            return [(False, self.trainables)]
        return [(flag, [t for t in self.trainables if t.decays == flag]) for flag in (True, False)]

    # -- probes ----------------------------------------------------------------------------
    def one_sided_probes(self, closure: Closure, directions: Sequence[Combination]
                         ) -> Tuple[List[float], Optional[Combination]]:
        """L(θ + ε·d_i) for each direction, one fused pass per forward. Returns the losses and
        the pending combination −ε·d_last that restores θ (to fuse into the next pass; None in
        functional mode, where the weights stay at θ)."""
        losses: List[float] = []
        pending: Optional[Combination] = None
        if self.views is not None:  # the weights stay at θ: nothing pending
            for d in directions:
                self.show(d.scaled(self.eps))
                losses.append(self.evaluate_finite(closure, f"of probe {len(losses)} at θ+ε·d"))
            self.show(None)
            return losses, None
        for d in directions:
            step = d.scaled(self.eps)
            self.pass_(step if pending is None else pending + step)
            pending = d.scaled(-self.eps)
            self.pending(lambda p=pending: self.pass_(p))
            losses.append(self.evaluate_finite(closure, f"of probe {len(losses)} at θ+ε·d"))
        assert pending is not None
        return losses, pending

    # -- the step --------------------------------------------------------------------------
    def _direction(self, closure: Closure) -> Tuple[Combination, Optional[Combination]]:
        raise NotImplementedError

    def _step(self, closure: Closure) -> float:
        direction, pending = self._direction(closure)
        first = [pending]
        shown = [0.0]

        def apply(c: float) -> None:
            if self.views is not None:  # functional: move what the forwards see, not the weights
                shown[0] += c
                self.show(direction.scaled(shown[0]) if shown[0] != 0.0 else None)
                return
            combo = direction.scaled(c)
            if first[0] is not None:  # fuse the probes' pending restore into the first pass
                combo = first[0] + combo
            self.pass_(combo)
            first[0] = None

        if self._pair is not None:  # one forward over the doubled batch: θ + ε·d, then θ − ε·d
            step = direction.scaled(self.eps)
            self.views.show(step.seeds, step.coeffs, step.mean_coeff, paired=True)
            plus, minus = self.evaluate_pair(self._pair)
        else:
            plus, minus = self.two_point(closure, apply, self.eps)
        if self.views is not None:
            self.show(None)
            self.pending(None)
        g = (plus - minus) / (2.0 * self.eps)
        with self.committing():
            self._update(direction, g)
        self._diag.update(loss_plus=plus, loss_minus=minus, projected_grad=g)
        self._last = direction
        return 0.5 * (plus + minus)

    def _update(self, direction: Combination, g: float) -> None:
        """From θ − carried·d to (1 − lr·wd)·θ − lr·g·d: one pass per weight-decay group
        (skipped when it would change nothing), rounded as :meth:`update_rounding` says."""
        for i, (decays, group) in enumerate(self.decay_groups()):
            decay, coeff = self.restore_update(g, decays, carried=self.carried)
            if coeff != 0.0 or decay != 1.0:
                self.pass_(direction.scaled(coeff), decay, group,
                           rounding=self.update_rounding(group_pass("update", i)))

    # -- diagnostics -----------------------------------------------------------------------
    def last_direction(self) -> Dict[str, torch.Tensor]:
        """The last step's direction per parameter (float32; uses μ as it is now; the local shard
        of a sharded parameter)."""
        d = self._last
        if self.steps_done == 0 or d is None:
            raise RuntimeError("no step taken yet")
        out = [torch.zeros(t.local.shape, dtype=torch.float32, device=self.device)
               for t in self.trainables]
        means = self._means(self.trainables) if d.mean_coeff != 0.0 else None
        with self._kernels():
            self.perturb(self.trainables, d.seeds, d.coeffs,
                         means=None if means is None else [m.float() for m in means],
                         mean_coeff=d.mean_coeff, into=out)
        return {t.name: v for t, v in zip(self.trainables, out)}

    def _extra_state(self):
        d = self._last
        return {"last": None if d is None else [list(d.seeds), list(d.coeffs), d.mean_coeff]}

    def _load_extra_state(self, extra) -> None:
        last = extra.get("last")
        self._last = None if last is None else Combination(tuple(last[0]), tuple(last[1]), last[2])
