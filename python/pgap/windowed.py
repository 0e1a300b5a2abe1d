"""WindowedLowRankZO: the layer P-GAP and SubZero share on top of :class:`LowRankZO`. Each matrix
W (m × n) is perturbed by P = U·Z·V^T (scale folded into Z), or Z·V^T when one-sided (U the
identity, Z m × r); U, V and the window's S_r are set every ``window`` steps (subclasses say how:
``_refresh``), Z is drawn from the step's seed and may be aligned (:meth:`_aligned`)."""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

import pgap_kernels

from .base import Closure
from .lowrank_zo import LowRankZO
from .probe_bases import MatrixState, make_states
from .side_paths import eligible_modules
from .state import checked_state_tensors, field_tensors


class WindowedLowRankZO(LowRankZO):
    """Low-rank ZO with per-window bases: ``self.matrices`` (one :class:`MatrixState` per matrix
    with a subspace, from :meth:`_make_matrices`), ``self.vectors`` the rest. Keeps the window's
    statistics (``_rhos``, ``_window_diag``, ``_s_norms``) for the diagnostics and the state."""

    def __init__(self, model: nn.Module, *, rank: int, window: int, scale: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.rank, self.window, self.scale = rank, window, scale
        self._eyes: Dict[int, torch.Tensor] = {}
        self.matrices: List[MatrixState] = self._make_matrices(model)
        self._split([s.trainable for s in self.matrices])
        if self.mode == "functional":
            self._setup_functional(model)
        self._rhos: List[float] = []
        self._window_diag: Dict[str, Any] = {}
        self._s_norms: Dict[str, float] = {}

    def _make_matrices(self, model: nn.Module) -> List[MatrixState]:
        """A :class:`MatrixState` for every non-empty trainable matrix (r = min(rank, m, n))."""
        return make_states(self.trainables, self.rank, self.scale)

    @property
    def one_sided(self) -> bool:
        """True when U is the identity: S, Z and A are m × r."""
        return False

    def _factors(self, s: MatrixState) -> Tuple[torch.Tensor, torch.Tensor]:
        """(left, middle) of P = left·middle·V^T: (U, Z), or (Z, I) when one-sided."""
        if self.one_sided:
            return s.Z, self._eye(s.rank)
        return s.U, s.Z

    def _eye(self, r: int) -> torch.Tensor:
        """The r × r identity on the device, made once per r."""
        if r not in self._eyes:
            self._eyes[r] = torch.eye(r, device=self.device)
        return self._eyes[r]

    # -- functional mode -------------------------------------------------------------------
    def _setup_functional(self, model: nn.Module) -> None:
        users = eligible_modules(model, self.matrices)
        for s in self.matrices:
            mods = users.get(id(s.trainable.param))
            if mods:
                s.functional, s.modules = True, mods
                rows = s.shape[0] if self.one_sided else s.rank
                s.A = torch.zeros(rows, s.rank, device=self.device)
        # views of every trainable: the probes show them all; the two-point pair the vectors
        self._attach_functional(model, self.matrices, self.trainables)

    # -- passes ----------------------------------------------------------------------------
    def _matrix_pass(self, decays: Optional[bool], seed: int, coeff: float, decay: float = 1.0,
                     rounding: Optional[Dict[str, Any]] = None) -> None:
        """W ← decay·W + coeff·left·middle·Vᵀ on the in-place matrices (``lowrank_perturb_``)."""
        states = [s for s in self.matrices if not s.functional and (decays is None or s.trainable.decays == decays)]
        if states:
            factors = [self._factors(s) for s in states]
            extra = dict(rounding, keys=[s.trainable.key for s in states],
                         offsets=[s.trainable.offset for s in states]) if rounding else {}
            pgap_kernels.lowrank_perturb_([s.trainable.local for s in states], [f[0] for f in factors],
                                          [f[1] for f in factors], [s.V for s in states],
                                          [coeff] * len(states), decay=decay, **extra)

    def _directions(self, seed: int) -> None:
        """Set each matrix's Z = scale·aligned(Z0) for the step with ``seed`` (batched per
        shape; :meth:`_aligned` transforms each batch)."""
        if not self.matrices:
            return
        Z0 = self._draw_factors([(s.shape[0] if self.one_sided else s.rank, s.rank) for s in self.matrices],
                                seed, [s.z_key for s in self.matrices])
        by_rank: Dict[tuple, List[int]] = {}
        for i, s in enumerate(self.matrices):
            by_rank.setdefault(tuple(Z0[i].shape), []).append(i)
        for idx in by_rank.values():
            z0 = torch.stack([Z0[i] for i in idx])
            z0 = self._aligned(z0, idx, seed)
            for j, i in enumerate(idx):
                self.matrices[i].Z = (z0[j] * self.matrices[i].scale).contiguous()

    def _pair_and_update(self, closure: Closure, seed: int, **diag: Any) -> float:
        """The rest of a step once Z is set: the two-point pair along P, the update (no rollback
        from there), the diagnostics (the window's statistics, losses, g, ``diag``). Returns
        (L+ + L−)/2."""
        if self._pair is not None:  # paired forwards: one forward over the doubled batch
            plus, minus = self._paired_two_point(seed)
        else:
            plus, minus = self.two_point(closure, lambda c: self._apply(seed, c), self.eps)
        g = (plus - minus) / (2.0 * self.eps)
        with self.committing():
            self._update(seed, g)
        self._diag = dict(self._window_diag, loss_plus=plus, loss_minus=minus, projected_grad=g, **diag)
        return 0.5 * (plus + minus)

    def _aligned(self, z0: torch.Tensor, idx: List[int], seed: int) -> torch.Tensor:
        """The step's r × r (or m × r) draws of matrices ``idx`` (stacked) as perturbed: Z0
        itself here; P-GAP aligns them with S_r."""
        return z0

    def _window_started(self, step: int) -> None:
        """Record the new window's start and each matrix's ||S_r||_F (diagnostics)."""
        norms = torch.stack([torch.linalg.matrix_norm(s.S) for s in self.matrices]).tolist()
        self._window_diag["window_start"] = step
        self._s_norms = {s.name: v for s, v in zip(self.matrices, norms)}

    # -- atomic steps ----------------------------------------------------------------------
    def _step_state(self) -> Dict[str, Any]:
        """Bases, S_r, Z (replaced, never mutated, before the update passes) and the window's
        statistics (and, in LowRankZO, the activation bases)."""
        return dict(super()._step_state(), matrices=[(s.U, s.V, s.S, s.Z) for s in self.matrices],
                    window=(self._rhos, self._window_diag, self._s_norms))

    def _restore_step_state(self, saved: Dict[str, Any]) -> None:
        super()._restore_step_state(saved)
        for s, (U, V, S, Z) in zip(self.matrices, saved["matrices"]):
            s.U, s.V, s.S, s.Z = U, V, S, Z
        self._rhos, self._window_diag, self._s_norms = saved["window"]

    # -- diagnostics -----------------------------------------------------------------------
    def diagnostics(self, per_matrix: bool = False) -> Dict[str, Any]:
        """Last step's losses, projected gradient, the window's statistics (P-GAP: probe rho
        mean/std/min/max, delta) and min/median/max of ||S_r||_F; ``per_matrix`` adds each
        matrix's ||S_r||_F under "s_norms"."""
        out = super().diagnostics()
        if self._s_norms:
            norms = list(self._s_norms.values())
            out.update(s_norm_min=min(norms), s_norm_median=statistics.median(norms),
                       s_norm_max=max(norms))
        if per_matrix:
            out["s_norms"] = dict(self._s_norms)
        return out

    def last_direction(self) -> Dict[str, torch.Tensor]:
        if self.steps_done == 0 or any(s.Z is None for s in self.matrices):
            raise RuntimeError("no step taken yet")
        seed = self.step_seed(self.steps_done - 1)
        out = {}
        for s in self.matrices:
            left, mid = self._factors(s)
            out[s.name] = left @ mid @ s.V.T
        out.update(self._vector_directions(seed))
        return {t.name: out[t.name] for t in self.trainables}

    # -- state -----------------------------------------------------------------------------
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        return dict(field_tensors(((s.name, s) for s in self.matrices), ("U", "V", "S", "Z")),
                    **field_tensors(((f"{b.name}.activation", b) for b in self.bases), ("Q", "sigma")))

    def _load_state_tensors(self, tensors: Dict[str, torch.Tensor]) -> None:
        shapes = {}
        for s in self.matrices:
            m, n = s.trainable.local.shape
            left = m if self.one_sided else s.rank
            shapes.update({f"{s.name}.U": (m, s.rank), f"{s.name}.V": (n, s.rank),
                           f"{s.name}.S": (left, s.rank), f"{s.name}.Z": (left, s.rank)})
        for b in self.bases:
            shapes.update({f"{b.name}.activation.Q": (b.shape[1], b.rank),
                           f"{b.name}.activation.sigma": (b.rank,)})
        loaded = checked_state_tensors(tensors, shapes, self.device)
        self.merge()
        for s in self.matrices:
            for f in ("U", "V", "S", "Z"):
                setattr(s, f, loaded.get(f"{s.name}.{f}"))
        for b, s in zip(self.bases, self.matrices):
            for f in ("Q", "sigma"):
                if f"{b.name}.activation.{f}" in loaded:
                    setattr(b, f, loaded[f"{b.name}.activation.{f}"])
            b.V = s.V

    def _extra_state(self) -> Dict[str, Any]:
        return {"rhos": list(self._rhos), "window": dict(self._window_diag),
                "s_norms": dict(self._s_norms)}

    def _load_extra_state(self, extra: Dict[str, Any]) -> None:
        self._rhos = list(extra.get("rhos", []))
        self._window_diag = dict(extra.get("window", {}))
        self._s_norms = dict(extra.get("s_norms", {}))
