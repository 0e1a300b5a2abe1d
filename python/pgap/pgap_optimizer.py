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
from .base import Closure
from .distributed import ProcessGroup
from .params import MODE_CHOICES, DecayFilter
from .probe_bases import MatrixState, probe_operators, project_probe, set_probe_bases, set_random_bases
from .seeds import BASIS_STREAM, RSVD_STREAM, derive_seed, fnv1a32, random_sign
from .windowed import WindowedLowRankZO

XI_CHOICES = ("per_matrix", "shared")
SUBSPACE_CHOICES = ("probe", "random", "activation")
SCALE_CHOICES = ("auto", "none", "subzero")


class PGAP(WindowedLowRankZO):
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
        :meth:`merge`, and before ``state_dict()`` of the optimizer or the model outside
        :meth:`unmerged`; the probes' and the other parameters' ±ε·z are never written
        either: the forwards see ``pgap_kernels.perturbed`` copies). "auto" (default):
        functional for bf16/fp16 weights without weight decay, else in place.
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
                         vector_lr_scale=self.vector_lr_scale, rank=self.rank, window=self.window,
                         scale=self.scale)

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

    def _make_matrices(self, model: nn.Module) -> List[MatrixState]:
        """subspace="activation": one state per activation basis (V from the sketches, U = I)."""
        if self.subspace != "activation":
            return super()._make_matrices(model)
        if self.scale != "none":
            raise ValueError('subspace="activation" needs scale="none"')
        if any(t.sharded for t in self.trainables):
            raise ValueError('subspace="activation" does not support sharded (FSDP2) parameters yet')
        return [MatrixState(b.trainable, b.rank, 1.0, fnv1a32(b.name + "#Z"))
                for b in self._activation_bases(model, self.rank, oversample=0)]

    # -- passes ----------------------------------------------------------------------------
    def _perturb_all(self, seeds: List[int], coeffs: List[float]) -> None:
        """Full-dimensional Gaussian pass over every trainable parameter (probe phase; shown
        through the views in functional mode)."""
        self._move(self.trainables, seeds, coeffs)

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
        self._window_started(step)

    def _aligned(self, z0: torch.Tensor, idx: List[int], seed: int) -> torch.Tensor:
        """Z = aligned_perturbation(Z0, S_r, xi, delta_t) when ``align`` (else Z0)."""
        if not self.align:
            return z0
        shared = random_sign(seed)
        xi = torch.tensor([shared if self.xi == "shared" else
                           random_sign(seed, self.matrices[i].trainable.key) for i in idx], device=self.device)
        S = torch.stack([self.matrices[i].S for i in idx])
        return pgap_kernels.aligned_perturbation(z0, S, xi, self.delta_at(self.steps_done))

    # -- the step --------------------------------------------------------------------------
    def _step(self, closure: Closure) -> float:
        if self.steps_done % self.window == 0:
            self._refresh(closure)
        seed = self.step_seed()
        delta = self.delta_at(self.steps_done)
        self._directions(seed)
        return self._pair_and_update(closure, seed, delta=delta)

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
