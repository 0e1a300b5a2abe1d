"""LowRankZO: the layer P-GAP, SubZero and AGZO share. Every trainable matrix that has a subspace
moves by a low-rank direction, every other trainable (a "vector": biases, norm weights, matrices
without a subspace) by the stream Gaussian of the step's seed, in one two-point difference."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import pgap_kernels

from .activation import ActivationBasis, ActivationSketcher, make_bases, random_start
from .base import ZOOptimizer
from .params import Trainable, resolve_mode
from .seeds import BASIS_STREAM, LOWRANK_PASSES, derive_seed, group_pass
from .side_paths import SidePath
from .state import before_state_dict
from .views import Views


class LowRankZO(ZOOptimizer):
    """Two-point ZO with low-rank matrix directions. Subclasses name their matrices
    (:meth:`_split`), say how they move (:meth:`_matrix_pass`) and run the step (``_step``,
    with :meth:`_apply` as the two-point pair's pass and :meth:`_update` as the update).

    ``mode="functional"`` (:meth:`_attach_functional`): the matrices used only by
    nn.Linear/nn.Embedding forwards move through a :class:`SidePath` (never written between
    merges), the vectors through :class:`Views` (never written with ±ε·z). Activation bases
    (:meth:`_activation_bases`) are refreshed by an :class:`ActivationSketcher`.
    """

    rounding_passes = LOWRANK_PASSES

    def __init__(self, model: nn.Module, *, mode: str, vector_lr_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.mode = resolve_mode(mode, self.trainables, side_paths=True, weight_decay=self.weight_decay)
        self.vector_lr_scale = vector_lr_scale
        self.vectors: List[Trainable] = []  # the trainables without a low-rank direction
        self.bases: List[ActivationBasis] = []  # activation bases, when the subclass uses them
        self.sketcher: Optional[ActivationSketcher] = None
        self.side: Optional[SidePath] = None
        self.views: Optional[Views] = None

    # -- setup -----------------------------------------------------------------------------
    def _split(self, matrices: Sequence[Trainable]) -> None:
        """``self.vectors`` = the trainables not among ``matrices``."""
        ids = {id(t.param) for t in matrices}
        self.vectors = [t for t in self.trainables if id(t.param) not in ids]

    def _activation_bases(self, model: nn.Module, rank: int, oversample: int) -> List[ActivationBasis]:
        """``self.bases``: one per matrix that an nn.Linear uses, from the seeded random start
        (:func:`pgap.activation.random_start`), and the sketcher that refreshes them."""
        self.bases = make_bases(model, self.trainables, rank, oversample)
        start = derive_seed(self.seed, 0, BASIS_STREAM)
        for b in self.bases:
            b.Q = random_start(b, start)
        self.sketcher = self.attach(ActivationSketcher(self.bases))
        return self.bases

    def _attach_functional(self, model: nn.Module, states: Sequence[Any], viewed: Sequence[Trainable]) -> None:
        """Route the forwards of ``states`` (those with ``functional`` set) through a side path
        and show the perturbations of ``viewed`` through views."""
        self.side = self.attach(SidePath(model, states, self.weight_decay,
                                         lambda: before_state_dict(self)))
        if viewed:
            self.views = self.attach(Views(model, viewed))

    def _draw_factors(self, shapes: Sequence[Sequence[int]], seed: int, keys: Sequence[int]
                      ) -> List[torch.Tensor]:
        """New float32 tensors of ``shapes`` holding the Gaussian stream of ``seed`` under
        ``keys`` (views of one buffer), drawn in one ``perturb_`` call (decay 0: the stream alone,
        what ``pgap_kernels.gaussian`` gives per tensor)."""
        sizes = [math.prod(shape) for shape in shapes]
        flat = torch.empty(sum(sizes), device=self.device)
        out = [part.view(*shape) for part, shape in zip(flat.split(sizes), shapes)]
        if out:
            pgap_kernels.perturb_(out, seed, 1.0, keys=list(keys), decay=0.0)
        return out

    # -- passes ----------------------------------------------------------------------------
    @property
    def carried(self) -> float:
        """How much of −P the vectors hold after the two-point pair: ε in place, 0 with views."""
        return 0.0 if self.views is not None else self.eps

    def _perturbed_vectors(self) -> List[Trainable]:
        """The vectors that move (default: all)."""
        return self.vectors

    def _move(self, trainables: Sequence[Trainable], seeds: Sequence[int], coeffs: Sequence[float]) -> None:
        """θ += Σ_j coeffs[j]·z(seeds[j]) over ``trainables``: in place, or (with views) added to
        what the next forwards see there, the weights untouched."""
        if self.views is None:
            self.perturb(trainables, seeds, coeffs)
        else:
            self.views.move(trainables, seeds, coeffs)

    def _matrix_pass(self, decays: Optional[bool], seed: int, coeff: float, decay: float = 1.0,
                     rounding: Optional[Dict[str, Any]] = None) -> None:
        """W ← decay·W + coeff·P_W over the in-place matrices (those whose decay flag is
        ``decays``; all when None). Mutates the weights."""
        raise NotImplementedError

    def _apply(self, seed: int, coeff: float) -> None:
        """θ += coeff·P: in-place matrices, the side path's coefficient, the vectors."""
        self._matrix_pass(None, seed, coeff)
        if self.side is not None:
            self.side.coeff += coeff
        self._move(self._perturbed_vectors(), [seed], [coeff])

    # -- paired forwards (pgap.paired) -----------------------------------------------------
    @property
    def supports_pairs(self) -> bool:  # type: ignore[override]
        """Paired forwards (``step(closure, pair_closure=...)``) need functional mode with every
        low-rank matrix (the trainables that are not vectors) on the side path, none written in
        place, and the views on blocks."""
        on_side = len(self.side.states) if self.side is not None else 0
        return (self.mode == "functional" and on_side == len(self.trainables) - len(self.vectors)
                and (self.views is None or self.views.unit == "block"))

    def _paired_two_point(self, seed: int,
                          capture: Optional[contextlib.AbstractContextManager] = None) -> Tuple[float, float]:
        """(L+, L−) from one forward of the pair closure over the doubled batch: the side paths
        add +ε·P on its first half and −ε·P on its second (x·V once over both), the moving
        vectors' views show ±ε·z likewise; ``capture`` as :meth:`evaluate_pair`'s, sketching
        the first half's activations (the +ε forward's). Leaves the side coefficient at +ε (the
        update resets it); the weights are never written."""
        self.side.coeff, self.side.paired = self.eps, True
        if self.views is not None:
            self.views.show([seed], [self.eps], only=self._perturbed_vectors(), paired=True)
        if self.sketcher is not None:
            self.sketcher.first_half = True
        try:
            return self.evaluate_pair(self._pair, capture=capture)
        finally:
            self.side.paired = False
            if self.sketcher is not None:
                self.sketcher.first_half = False

    def _update(self, seed: int, g: float) -> None:
        """From θ − ε·P to (1 − lr·wd)·θ − lr·g·P, matrices then vectors per weight-decay group
        (vectors at ``vector_lr_scale``·lr; with views they hold no ε·P), each pass rounded as
        its named pass says; side-path matrices accumulate A −= lr·g·Z."""
        if self.views is not None:
            self.views.hide()
        for i, decays in enumerate((True, False) if self.weight_decay > 0 else (None,)):
            decay, coeff = self.restore_update(g, bool(decays))
            self._matrix_pass(decays, seed, coeff, decay, rounding=self.update_rounding(group_pass("matrices", i)))
            decay, coeff = self.restore_update(g, bool(decays), self.vector_lr_scale, carried=self.carried)
            rounding = self.update_rounding(group_pass("vectors", i))
            if coeff != 0.0 or decay != 1.0:
                self.perturb([t for t in self._perturbed_vectors() if decays is None or t.decays == decays],
                             [seed], [coeff], decay=decay, rounding=rounding)
        if self.side is not None:
            self.side.accumulate(-self.lr * g)

    # -- atomic steps, diagnostics ---------------------------------------------------------
    def _step_state(self) -> Dict[str, Any]:
        """The activation bases (replaced, never mutated, before the update passes)."""
        return dict(super()._step_state(), bases=[(b.Q, b.V, b.sigma) for b in self.bases])

    def _restore_step_state(self, saved: Dict[str, Any]) -> None:
        super()._restore_step_state(saved)
        for b, (Q, V, sigma) in zip(self.bases, saved["bases"]):
            b.Q, b.V, b.sigma, b.sketch = Q, V, sigma, None

    def _vector_directions(self, seed: int) -> Dict[str, torch.Tensor]:
        """The vectors' part of the direction of the step with ``seed`` (zeros where frozen)."""
        moving = {t.name for t in self._perturbed_vectors()}
        with self._kernels():
            return {t.name: (pgap_kernels.gaussian(tuple(t.local.shape), seed, key=t.key,
                                                   offset=t.offset, device=self.device)
                             if t.name in moving else torch.zeros(t.local.shape, device=self.device))
                    for t in self.vectors}
