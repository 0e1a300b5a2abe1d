"""P-GAP (Mi et al., 2025, arXiv 2510.18228): ZO steps with gradient-aligned perturbations in a
probed low-rank subspace. Every choice the paper leaves open is documented in docs/pgap.md."""
from __future__ import annotations

import contextlib
import statistics
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

import pgap_kernels

from ._checks import check_choice, check_int, check_real
from .activation import ActivationBasis
from .base import Closure
from .distributed import ProcessGroup
from .lowrank_zo import LowRankZO
from .params import MODE_CHOICES, DecayFilter
from .probe_bases import (MatrixState, make_states, probe_operators, project_probe, set_probe_bases,
                          set_random_bases)
from .seeds import BASIS_STREAM, RSVD_STREAM, derive_seed, fnv1a32, random_sign
from .side_paths import eligible_modules
from .state import checked_state_tensors, field_tensors

XI_CHOICES = ("per_matrix", "shared")
SUBSPACE_CHOICES = ("probe", "random", "activation")
SCALE_CHOICES = ("auto", "none", "subzero")


class PGAP(LowRankZO):
    """P-GAP: projected gradient-aligned perturbations.

    Every ``window`` steps (starting at step 0) a probe phase runs ``probes`` two-sided Gaussian
    probes on the current batch (2·probes forwards, 2·probes + 1 fused passes), keeps only
    (seed_j, rho_j), and sets each matrix's U, V, S_r from the implicit S = (1/h)·Σ rho_j·Xi_j
    (randomized SVD, nothing m×n materialized). Each step then perturbs every matrix by
    P = U·Z·V^T with Z = aligned_perturbation(Z0, S_r, xi, delta_t) (r×r, Z0 from the stream) and
    every other parameter by a plain stream Gaussian, and takes a two-point step along P.

    Parameters (beyond :class:`pgap.MeZO`'s lr, eps, weight_decay, seed, eval_mode, backend)
    ----------
    rank : int >= 1, subspace rank r (per matrix r = min(rank, m, n))
    window : int >= 1, steps between subspace refreshes
    probes : int >= 1, probes per refresh (h)
    probe_eps : float > 0 or None (= eps)
    delta : float or (delta0, delta_end), >= 0; delta_t goes linearly from delta0 to delta_end
        over ``total_steps`` (held at delta0 when total_steps is None)
    total_steps : int >= 1 or None
    xi : "per_matrix" (one ±1 per matrix per step) or "shared" (one per step)
    subspace : "probe" (bases from the probes' SVD), "random" (Q factors of Gaussians, SubZero;
        with align=True the probes still give S_r = U^T S V; with align=False no probe runs) or
        "activation" (one-sided: V from the layer's input activations as in :class:`pgap.AGZO`,
        sketched during the probe forwards of each window, one orthogonal-iteration step per
        probe; U is the identity, so S = (1/h)·Σ rho_j·Xi_j·V and Z are m × r and P = Z·V^T.
        Only matrices that an nn.Linear uses get a basis; the others are perturbed like the
        vectors. scale must be "none")
    align : bool, apply the alignment (False: Z = Z0)
    scale : "auto" (default), "subzero" or "none". "subzero" multiplies each matrix's U·Z·V^T by
        sqrt(m·n)/r (SubZero's scale: E||P||² = m·n as for MeZO's Gaussian, and the expected
        step over random bases is MeZO's, so MeZO's lr is the natural one for every shape);
        "none" is the paper's parametrization (||P||_F ≈ r: its lr is ~m·n/r² times MeZO's,
        per matrix). "auto" = "subzero" for the probe and random subspaces, "none" for the
        activation subspace (whose one-sided P is already MeZO-scaled)
    mode : "auto", "inplace" (W written 3 times per step by lowrank_perturb_) or "functional"
        (matrices used only as nn.Linear/nn.Embedding weights are never written inside a window:
        a rank-r side path in the forward, merged into W at the end of a window, on
        :meth:`merge`, and before ``state_dict()`` of the optimizer or the model; the probes'
        and the other parameters' ±ε·z are never written either: the forwards see
        ``pgap_kernels.perturbed`` copies). "auto" (default): functional for bf16/fp16 weights
        without weight decay, else in place.
    rounding : "stochastic" (default) or "nearest": how updates round into bf16/fp16 weights.
    svd_oversample, svd_iters : randomized SVD oversampling and power iterations
    vector_lr_scale : float >= 0, the lr of the parameters that are not matrices (biases, norm
        weights: full Gaussian directions, perturbed by the same step's seed in the same finite
        difference) relative to ``lr``; it scales their update, not their perturbation. Default
        1.0: with scale="subzero" every coordinate's perturbation has MeZO's size, so one lr and
        one g move all parameters along exactly the perturbed direction, as MeZO does. With
        scale="none" P-GAP's lr is ~(m·n)/r² times MeZO's, far too large for full-dimensional
        directions: 0 freezes them, a small value (e.g. MeZO's lr / P-GAP's lr) keeps them
        MeZO-like.
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, rank: int = 8,
                 window: int = 100, probes: int = 10, probe_eps: Optional[float] = None,
                 delta: Union[float, Tuple[float, float]] = (2.0, 0.0),
                 total_steps: Optional[int] = None, xi: str = "per_matrix",
                 subspace: str = "probe", align: bool = True, scale: str = "auto",
                 mode: str = "auto", weight_decay: float = 0.0, seed: int = 0,
                 svd_oversample: int = 10, svd_iters: int = 1, vector_lr_scale: float = 1.0,
                 eval_mode: bool = True,
                 backend: Optional[str] = None, decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, rounding: str = "stochastic") -> None:
        self.rank = check_int(rank, "rank", low=1)
        self.window = check_int(window, "window", low=1)
        self.probes = check_int(probes, "probes", low=1)
        self.probe_eps = None if probe_eps is None else check_real(probe_eps, "probe_eps", low=0.0,
                                                                    strict=True)
        self.delta = self._check_delta(delta)
        self.total_steps = None if total_steps is None else check_int(total_steps, "total_steps", low=1)
        self.xi = check_choice(xi, "xi", XI_CHOICES)
        self.subspace = check_choice(subspace, "subspace", SUBSPACE_CHOICES)
        if not isinstance(align, bool):
            raise TypeError(f"align must be a bool, got {type(align).__name__}")
        self.align = align
        self.scale = self._resolve_scale(check_choice(scale, "scale", SCALE_CHOICES), self.subspace)
        check_choice(mode, "mode", MODE_CHOICES)
        self.svd_oversample = check_int(svd_oversample, "svd_oversample", low=0)
        self.svd_iters = check_int(svd_iters, "svd_iters", low=0)
        self.vector_lr_scale = check_real(vector_lr_scale, "vector_lr_scale", low=0.0)
        super().__init__(model, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed,
                         eval_mode=eval_mode, backend=backend, decay_filter=decay_filter,
                         process_group=process_group, rounding=rounding, mode=mode,
                         vector_lr_scale=self.vector_lr_scale)
        self._eyes: Dict[int, torch.Tensor] = {}
        if self.subspace == "activation":
            self._setup_activation(model)
        else:
            self.matrices: List[MatrixState] = make_states(self.trainables, self.rank, self.scale)
        self._split([s.trainable for s in self.matrices])
        if self.mode == "functional":
            self._setup_functional(model)
        self._rhos: List[float] = []
        self._window_diag: Dict[str, Any] = {}
        self._s_norms: Dict[str, float] = {}

    # -- options ---------------------------------------------------------------------------
    @staticmethod
    def _check_delta(delta) -> Tuple[float, float]:
        if isinstance(delta, (tuple, list)):
            if len(delta) != 2:
                raise ValueError(f"delta must be a float or a pair (delta0, delta_end), got {delta!r}")
            pair = (check_real(delta[0], "delta[0]", low=0.0), check_real(delta[1], "delta[1]", low=0.0))
        else:
            value = check_real(delta, "delta", low=0.0)
            pair = (value, value)
        return pair

    @staticmethod
    def _resolve_scale(scale: str, subspace: str) -> str:
        """"auto": the scale at which MeZO's lr is the natural one for every matrix, i.e.
        E[g·P] = grad in expectation over the subspace: "subzero" (sqrt(m·n)/r) for the two-sided
        probe and random subspaces, "none" for the one-sided activation subspace (its Z·V^T
        already has E[g·P] = grad·V·V^T)."""
        if scale != "auto":
            return scale
        return "none" if subspace == "activation" else "subzero"

    def hyperparameters(self) -> Dict[str, Any]:
        return dict(super().hyperparameters(), rank=self.rank, window=self.window,
                    probes=self.probes, probe_eps=self.probe_eps, delta=list(self.delta),
                    total_steps=self.total_steps, xi=self.xi, subspace=self.subspace,
                    align=self.align, scale=self.scale, mode=self.mode,
                    svd_oversample=self.svd_oversample, svd_iters=self.svd_iters,
                    vector_lr_scale=self.vector_lr_scale)

    def delta_at(self, step: int) -> float:
        """delta_t: linear from delta0 (step 0) to delta_end (step total_steps), then constant."""
        d0, d1 = self.delta
        if self.total_steps is None or d0 == d1:
            return d0
        return d0 + (d1 - d0) * min(step / self.total_steps, 1.0)

    @property
    def uses_probes(self) -> bool:
        return self.subspace in ("probe", "activation") or self.align

    # -- activation subspace ---------------------------------------------------------------
    @property
    def one_sided(self) -> bool:
        """True when U is the identity (subspace="activation"): S, Z and A are m × r."""
        return self.subspace == "activation"

    def _setup_activation(self, model: nn.Module) -> None:
        if self.scale != "none":
            raise ValueError('subspace="activation" needs scale="none"')
        if any(t.sharded for t in self.trainables):
            raise ValueError('subspace="activation" does not support sharded (FSDP2) parameters yet')
        self.matrices = [MatrixState(b.trainable, b.rank, 1.0, fnv1a32(b.name + "#Z"))
                         for b in self._activation_bases(model, self.rank, oversample=0)]

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
    def _perturb_all(self, seeds: List[int], coeffs: List[float]) -> None:
        """Full-dimensional Gaussian pass over every trainable parameter (probe phase; shown
        through the views in functional mode)."""
        self._move(self.trainables, seeds, coeffs)

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

    # -- probe phase -----------------------------------------------------------------------
    def _probe(self, closure: Closure) -> List[int]:
        """2h forwards with fused passes: +Q_1, −2Q_1, +Q_1+Q_2, …, +Q_h. Keeps rho_j."""
        eps = self.probe_eps if self.probe_eps is not None else self.eps
        seeds = self.probe_seeds(self.probes)
        rhos, losses, prev = [], [], None
        for j, s in enumerate(seeds):
            self._perturb_all(([prev] if prev is not None else []) + [s],
                              ([eps] if prev is not None else []) + [eps])
            self.pending(lambda s=s: self._perturb_all([s], [-eps]))
            with self._sketching():  # activation subspace: one orthogonal iteration per probe
                plus = self.evaluate_finite(closure, f"of probe {j} at θ+ε·Q")
                self._perturb_all([s], [-2.0 * eps])
                self.pending(lambda s=s: self._perturb_all([s], [eps]))
                minus = self.evaluate_finite(closure, f"of probe {j} at θ−ε·Q")
            rhos.append((plus - minus) / (2.0 * eps))
            losses.append(0.5 * (plus + minus))
            prev = s
        self._perturb_all([prev], [eps])
        self.pending(None)
        self._rhos = rhos
        self._window_diag = {"probe_loss": statistics.fmean(losses), "rho_mean": statistics.fmean(rhos),
                             "rho_std": statistics.pstdev(rhos), "rho_min": min(rhos),
                             "rho_max": max(rhos)}
        return seeds

    @contextlib.contextmanager
    def _sketching(self):
        """Capture the activation sketches during the block and turn them into bases after it
        (subspace="activation"; otherwise nothing). On an exception the sketches are dropped."""
        if self.sketcher is None:
            yield
            return
        with self.sketcher.capture():
            yield
        self.sketcher.finish(self.reducer)

    def _refresh(self, closure: Closure) -> None:
        """Start a window: merge (functional), probe, and set U, V, S_r of every matrix."""
        self.merge()
        if not self.matrices:
            return
        step = self.steps_done
        seeds = self._probe(closure) if self.uses_probes else []
        operators = probe_operators(self.matrices, seeds, self._rhos) if seeds else []
        if self.subspace == "activation":
            for s, b, op in zip(self.matrices, self.bases, operators):
                s.V = b.V
                s.S = (op @ b.V).contiguous()  # (1/h)·Σ rho_j·Xi_j·V, m × r, never m × n
        elif self.subspace == "probe":
            set_probe_bases(self.matrices, operators, oversample=self.svd_oversample,
                            n_iter=self.svd_iters, seed=derive_seed(self.seed, step, RSVD_STREAM),
                            reducer=self.reducer)
        else:
            set_random_bases(self.matrices, derive_seed(self.seed, step, BASIS_STREAM))
            if operators:
                project_probe(self.matrices, operators, self.reducer)
        norms = torch.stack([torch.linalg.matrix_norm(s.S) for s in self.matrices]).tolist()
        self._window_diag["window_start"] = step
        self._s_norms = {s.name: v for s, v in zip(self.matrices, norms)}

    # -- the step --------------------------------------------------------------------------
    def _directions(self, seed: int, delta: float) -> None:
        """Set each matrix's Z = scale·aligned(Z0) for the step with ``seed`` (batched per r)."""
        if not self.matrices:
            return
        dev = self.device
        Z0 = [torch.empty(s.shape[0] if self.one_sided else s.rank, s.rank, device=dev)
              for s in self.matrices]
        pgap_kernels.perturb_(Z0, seed, 1.0, keys=[s.z_key for s in self.matrices], decay=0.0)
        by_rank: Dict[tuple, List[int]] = {}
        for i, s in enumerate(self.matrices):
            by_rank.setdefault(tuple(Z0[i].shape), []).append(i)
        for idx in by_rank.values():
            z0 = torch.stack([Z0[i] for i in idx])
            if self.align:
                shared = random_sign(seed)
                xi = torch.tensor([shared if self.xi == "shared" else
                                   random_sign(seed, self.matrices[i].trainable.key) for i in idx],
                                  device=dev)
                S = torch.stack([self.matrices[i].S for i in idx])
                z0 = pgap_kernels.aligned_perturbation(z0, S, xi, delta)
            for j, i in enumerate(idx):
                self.matrices[i].Z = (z0[j] * self.matrices[i].scale).contiguous()

    def _step(self, closure: Closure) -> float:
        if self.steps_done % self.window == 0:
            self._refresh(closure)
        seed = self.step_seed()
        delta = self.delta_at(self.steps_done)
        self._directions(seed, delta)
        plus, minus = self.two_point(closure, lambda c: self._apply(seed, c), self.eps)
        g = (plus - minus) / (2.0 * self.eps)
        with self.committing():
            self._update(seed, g)
        self._diag = dict(self._window_diag, loss_plus=plus, loss_minus=minus, projected_grad=g,
                          delta=delta)
        return 0.5 * (plus + minus)

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
        """Last step's losses, projected gradient, delta, and the window's probe statistics
        (rho mean/std/min/max, min/median/max of ||S_r||_F); ``per_matrix`` adds each matrix's
        ||S_r||_F under "s_norms"."""
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

    def _alignment_extras(self, grads: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """Per matrix, the cosine between the window's estimate U·S_r·V^T and the backprop
        gradient ("subspace_cosine"), and the fraction of each gradient's norm inside
        span(U)×span(V) ("captured")."""
        cos, captured = {}, {}
        for s in self.matrices:
            G = grads[s.name]
            est = (s.S if self.one_sided else s.U @ s.S) @ s.V.T
            inside = G @ s.V if self.one_sided else s.U.T @ G @ s.V
            gn, en = float(G.norm()), float(est.norm())
            cos[s.name] = float((est * G).sum()) / (gn * en) if gn > 0 and en > 0 else float("nan")
            captured[s.name] = float(inside.norm()) / gn if gn > 0 else float("nan")
        return {"subspace_cosine": cos, "captured": captured}

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


class SubZero(PGAP):
    """SubZero (Yu et al., 2024), P-GAP's control: random low-rank perturbations without probes or
    alignment. :class:`PGAP` with ``subspace="random"``, ``align=False``: each matrix gets
    P = (sqrt(m·n)/r)·U·Z·V^T with U, V the Q factors of stream Gaussians, refreshed every
    ``window`` steps, Z an r×r stream Gaussian; every other parameter a plain stream Gaussian in
    the same two-point step. 2 forwards per step, MeZO's lr. The options are :class:`PGAP`'s that
    apply (``scale="none"`` gives the unscaled U·Z·V^T)."""

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, rank: int = 8,
                 window: int = 100, scale: str = "auto", mode: str = "auto",
                 weight_decay: float = 0.0, seed: int = 0, vector_lr_scale: float = 1.0,
                 eval_mode: bool = True, backend: Optional[str] = None,
                 decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, rounding: str = "stochastic") -> None:
        super().__init__(model, lr=lr, eps=eps, rank=rank, window=window, subspace="random",
                         align=False, scale=scale, mode=mode, weight_decay=weight_decay, seed=seed,
                         vector_lr_scale=vector_lr_scale, eval_mode=eval_mode, backend=backend,
                         decay_filter=decay_filter, process_group=process_group, rounding=rounding)
