"""AGZO (Lin et al., "AGZO: Activation-Guided Zeroth-Order Optimization for LLM Fine-Tuning",
arXiv 2601.17261): two-point ZO steps whose perturbation of each linear layer's weight lives in
the span of that layer's dominant input activations. Choices the paper leaves open are ours and
are documented in docs/agzo.md."""
from __future__ import annotations

import contextlib
import statistics
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

import pgap_kernels

from ._checks import check_choice, check_int, check_real
from .activation import ActivationBasis
from .base import Closure
from .distributed import ProcessGroup
from .lowrank_zo import LowRankZO
from .params import MODE_CHOICES, DecayFilter, Trainable
from .side_paths import SideState, eligible_modules
from .state import checked_state_tensors, field_tensors

OTHERS_CHOICES = ("gaussian", "frozen")


class AGZO(LowRankZO):
    """Activation-guided ZO-SGD.

    Every matrix W (m × n) that an ``nn.Linear`` uses as its weight (a tied ``lm_head``
    included) is perturbed by P = Ξ·Bᵀ: Ξ is an m × r matrix of the random stream (seeded per
    step, keyed by W's name) and B = V·diag(w), V (n × r) the orthonormal basis of the layer's
    dominant input directions (:mod:`pgap.activation`), w = 1 unless ``sigma_power`` > 0. The
    other trainable parameters get MeZO's Gaussians (``others="gaussian"``) or stay fixed
    (``"frozen"``). A step is MeZO's: three fused passes (``subspace_perturb_`` for the matrices,
    ``perturb_`` for the rest), g = (L+ − L−)/(2ε), θ ← (1 − lr·wd)·θ − lr·g·P.

    Bases: the first step runs one extra, unperturbed forward to sketch them from a seeded
    random start (counted in ``forwards``). The +ε forwards of the next ``first_iters`` steps
    and then of every ``refresh``-th step are sketched too (no extra forward): each is one
    orthogonal-iteration step from the current basis, applied from the following step.
    ``refresh=0`` stops after the first ``first_iters`` refinements.

    Parameters (beyond :class:`pgap.MeZO`'s lr, eps, weight_decay, seed, eval_mode, backend,
    decay_filter, process_group)
    ----------
    rank : int >= 1, basis size r (per matrix min(rank, n))
    refresh : int >= 0, steps between basis refreshes (0: never after the first)
    oversample : int >= 0, extra columns kept in the warm-start block
    first_iters : int >= 0, refinements of the first basis in the steps right after it
    others : "gaussian" or "frozen", what happens to the parameters without a basis
    sigma_power : float >= 0, scale basis direction i by σ_i^−α (normalized to mean square 1):
        a cheap curvature preconditioner (dominant directions are also high-curvature ones)
    mode : "auto", "inplace" (the basis matrices are written 3 times per step) or "functional" (a basis
        matrix used only by nn.Linear / nn.Embedding forwards is never written between
        refreshes: the forward adds (A + c·Ξ)·Bᵀ through a side path, the updates accumulate in
        A (m × r), and A·Bᵀ is merged into W before each refresh, on :meth:`merge` and before
        ``state_dict()`` of the optimizer or the model outside :meth:`unmerged`). The other
        parameters are never written with ±ε·z either: their forwards see
        ``pgap_kernels.perturbed`` copies
        (:class:`pgap.views.PerturbedViews`); they receive only the update. "auto" (default):
        functional for bf16/fp16 weights without weight decay, else in place.
    rounding : "stochastic" (default) or "nearest": how updates round into bf16/fp16 weights.
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, rank: int = 8,
                 refresh: int = 10, oversample: int = 4, first_iters: int = 2,
                 others: str = "gaussian", sigma_power: float = 0.0, mode: str = "auto",
                 weight_decay: float = 0.0,
                 seed: int = 0, eval_mode: bool = True, backend: Optional[str] = None,
                 decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, rounding: str = "stochastic") -> None:
        self.rank = check_int(rank, "rank", low=1)
        self.refresh = check_int(refresh, "refresh", low=0)
        self.oversample = check_int(oversample, "oversample", low=0)
        self.first_iters = check_int(first_iters, "first_iters", low=0)
        self.others = check_choice(others, "others", OTHERS_CHOICES)
        self.sigma_power = check_real(sigma_power, "sigma_power", low=0.0)
        check_choice(mode, "mode", MODE_CHOICES)
        super().__init__(model, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed,
                         eval_mode=eval_mode, backend=backend, decay_filter=decay_filter,
                         process_group=process_group, rounding=rounding, mode=mode)
        self._split([b.trainable for b in self._activation_bases(model, self.rank, self.oversample)])
        self._directions: List[torch.Tensor] = []
        self._refresh_diag: Dict[str, Any] = {}
        self._sides: Dict[int, SideState] = {}  # basis index -> its side-path state
        if self.mode == "functional":
            self._setup_functional(model)

    def hyperparameters(self) -> Dict[str, Any]:
        return dict(super().hyperparameters(), rank=self.rank, refresh=self.refresh,
                    oversample=self.oversample, first_iters=self.first_iters, others=self.others,
                    sigma_power=self.sigma_power, mode=self.mode)

    def close(self) -> None:
        """Merge (functional mode) and remove every hook: the sketches (the optimizer cannot
        refresh its bases afterwards) and the side paths (the model then runs without them)."""
        super().close()
        self._sides = {}

    # -- functional mode -------------------------------------------------------------------
    def _setup_functional(self, model: nn.Module) -> None:
        users = eligible_modules(model, self.bases)
        for i, b in enumerate(self.bases):
            mods = users.get(id(b.trainable.param))
            if mods:
                m = b.shape[0]
                self._sides[i] = SideState(b.trainable, None, torch.zeros(m, b.rank, device=self.device),
                                           modules=mods)
        self._attach_functional(model, list(self._sides.values()), self._perturbed_vectors())

    def _set_directions(self) -> None:
        """B of every basis, also as the side paths' right factor (merge before calling)."""
        self._directions = [self._scaled(b) for b in self.bases]
        for i, side in self._sides.items():
            side.V = self._directions[i]

    def _set_xi(self, seed: int) -> None:
        """The functional matrices' Ξ of this step (m × r each, materialized; new tensors, so the
        last step's stay as they were for a rollback), in one draw."""
        bases = [self.bases[i] for i in self._sides]
        xis = self._draw_factors([(b.shape[0], b.rank) for b in bases], seed,
                                 [b.trainable.key for b in bases])
        for side, xi in zip(self._sides.values(), xis):
            side.Z = xi

    # -- bases -----------------------------------------------------------------------------
    def _scaled(self, b: ActivationBasis) -> torch.Tensor:
        """B = V·diag(w), w_i ∝ σ_i^−α with mean(w²) = 1 (B = V when α = 0)."""
        if self.sigma_power == 0.0 or b.sigma is None:
            return b.V
        s = b.sigma[:b.rank].clamp_min(torch.finfo(torch.float32).tiny)
        w = s.pow(-self.sigma_power)
        w = w / w.square().mean().sqrt()
        return (b.V * w).contiguous()

    def _finish_refresh(self) -> None:
        self.merge()  # the accumulated updates belong to the old bases
        changed = self.sketcher.finish(self.reducer)
        self._set_directions()
        tops = [float(b.sigma[0]) for b in self.bases if b.sigma is not None and b.sigma.numel()]
        self._refresh_diag = {"refresh_step": self.steps_done, "bases_refreshed": changed,
                              "sigma1_median": statistics.median(tops) if tops else float("nan")}

    def _capturing(self, active: bool) -> contextlib.AbstractContextManager:
        return self.sketcher.capture() if active else contextlib.nullcontext()

    def _refresh_due(self) -> bool:
        step = self.steps_done
        if not self.bases or step == 0:
            return False
        return step <= self.first_iters or (self.refresh > 0 and step % self.refresh == 0)

    # -- passes ----------------------------------------------------------------------------
    def _matrix_pass(self, decays: Optional[bool], seed: int, coeff: float, decay: float = 1.0,
                     rounding: Optional[Dict[str, Any]] = None) -> None:
        """W ← decay·W + coeff·Ξ·Bᵀ on the in-place basis matrices (``subspace_perturb_``)."""
        self._subspace([i for i, b in enumerate(self.bases) if decays is None or b.trainable.decays == decays],
                       seed, coeff, decay, rounding)

    def _subspace(self, indices: Sequence[int], seed: int, coeff: float, decay: float = 1.0,
                  rounding: Optional[Dict[str, Any]] = None) -> None:
        """θ ← decay·θ + coeff·Ξ·Bᵀ on the in-place basis matrices among ``indices``."""
        indices = [i for i in indices if i not in self._sides]
        if not indices:
            return
        bases = [self.bases[i] for i in indices]
        pgap_kernels.subspace_perturb_([b.trainable.local for b in bases],
                                       [self._directions[i] for i in indices], [seed], [coeff],
                                       keys=[b.trainable.key for b in bases],
                                       offsets=[b.trainable.row_offset * b.rank for b in bases],
                                       decay=decay, **(rounding or {}))

    def _perturbed_vectors(self) -> List[Trainable]:
        """The vectors that move: all with others="gaussian", none when "frozen"."""
        return self.vectors if self.others == "gaussian" else []

    # -- the step --------------------------------------------------------------------------
    def _step(self, closure: Closure) -> float:
        if any(not b.ready for b in self.bases):  # first step: one unperturbed forward
            with self._capturing(True):
                self._refresh_diag["refresh_loss"] = self.evaluate_finite(closure, "of the basis forward")
            with self.committing():
                self._finish_refresh()
        elif not self._directions:
            self._set_directions()
        refresh = self._refresh_due()
        seed = self.step_seed()
        self._set_xi(seed)
        if self._pair is not None:
            plus, minus = self._paired_two_point(seed, capture=self._capturing(refresh))
        else:
            plus, minus = self.two_point(closure, lambda c: self._apply(seed, c), self.eps,
                                         capture=lambda: self._capturing(refresh))
        g = (plus - minus) / (2.0 * self.eps)
        with self.committing():
            self._update(seed, g)
            if refresh:
                self._finish_refresh()
        self._diag = dict(self._refresh_diag, loss_plus=plus, loss_minus=minus, projected_grad=g)
        return 0.5 * (plus + minus)

    # -- atomic steps ----------------------------------------------------------------------
    def _step_state(self) -> Dict[str, Any]:
        """Directions (replaced, never mutated, before the update passes), the refresh
        statistics, the side paths' Ξ (and, in LowRankZO, the bases)."""
        return dict(super()._step_state(), directions=list(self._directions),
                    refresh=dict(self._refresh_diag), xi={i: side.Z for i, side in self._sides.items()})

    def _restore_step_state(self, saved: Dict[str, Any]) -> None:
        super()._restore_step_state(saved)
        self._directions = saved["directions"]
        self._refresh_diag = saved["refresh"]
        for i, side in self._sides.items():
            side.Z, side.V = saved["xi"][i], (self._directions[i] if self._directions else None)

    # -- diagnostics -----------------------------------------------------------------------
    def last_direction(self) -> Dict[str, torch.Tensor]:
        if self.steps_done == 0 or not self._directions:
            raise RuntimeError("no step taken yet")
        seed = self.step_seed(self.steps_done - 1)
        out = self._vector_directions(seed)
        with self._kernels():
            for b, B in zip(self.bases, self._directions):
                m = b.trainable.local.shape[0]
                xi = pgap_kernels.gaussian((m, b.rank), seed, key=b.trainable.key,
                                           offset=b.trainable.row_offset * b.rank, device=self.device)
                out[b.name] = xi @ B.T
        return {t.name: out[t.name] for t in self.trainables}

    def _alignment_extras(self, grads: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """Per basis matrix, ``captured`` = ‖G·V‖/‖G‖: the fraction of the gradient's norm
        inside the activation subspace."""
        captured = {}
        for b in self.bases:
            G = grads[b.name]
            gn = float(G.norm())
            captured[b.name] = float((G @ b.V).norm()) / gn if gn > 0 and b.V is not None else float("nan")
        return {"captured": captured}

    # -- state -----------------------------------------------------------------------------
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        return field_tensors(((b.name, b) for b in self.bases), ("Q", "V", "sigma"))

    def _load_state_tensors(self, tensors: Dict[str, torch.Tensor]) -> None:
        shapes = {}
        for b in self.bases:
            n = b.shape[1]
            shapes.update({f"{b.name}.Q": (n, b.width), f"{b.name}.V": (n, b.rank),
                           f"{b.name}.sigma": (b.width,)})
        loaded = checked_state_tensors(tensors, shapes, self.device)
        for b in self.bases:
            for f in ("Q", "V", "sigma"):
                if f"{b.name}.{f}" in loaded:
                    setattr(b, f, loaded[f"{b.name}.{f}"])
            b.sketch = None
        self.merge()
        if all(b.ready for b in self.bases):
            self._set_directions()
        else:
            self._directions = []

    def _extra_state(self) -> Dict[str, Any]:
        return {"refresh": dict(self._refresh_diag)}

    def _load_extra_state(self, extra: Dict[str, Any]) -> None:
        self._refresh_diag = dict(extra.get("refresh", {}))
