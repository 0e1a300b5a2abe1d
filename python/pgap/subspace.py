"""P-GAP's per-matrix subspace state and how a window's bases are estimated.

For each trainable matrix W (m x n) a window keeps U (m x r), V (n x r) with orthonormal columns
and the r x r projected gradient S_r = U^T S V of the probe estimate S = (1/h) sum_j rho_j Xi_j,
where Xi_j is probe j's Gaussian block of W (stream key = W's key). S is never materialized: it is
a :class:`pgap_kernels.GaussianSum`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

import pgap_kernels

from .params import Trainable
from .seeds import fnv1a32


@dataclass
class MatrixState:
    """Subspace state of one trainable matrix (all float32, on the parameter's device).

    ``scale`` multiplies U Z V^T (1, or sqrt(m n)/r for scale="subzero"); ``z_key`` is the stream
    key of the r x r Z0 draws; ``A`` is the functional-mode accumulator (None in place) and
    ``accumulated`` says whether it may be non-zero.
    """
    trainable: Trainable
    rank: int
    scale: float
    z_key: int
    U: Optional[torch.Tensor] = None
    V: Optional[torch.Tensor] = None
    S: Optional[torch.Tensor] = None
    Z: Optional[torch.Tensor] = None
    A: Optional[torch.Tensor] = None
    accumulated: bool = False
    functional: bool = False
    modules: list = field(default_factory=list)

    @property
    def shape(self):
        return tuple(self.trainable.param.shape)

    @property
    def name(self) -> str:
        return self.trainable.name


def make_states(trainables: Sequence[Trainable], rank: int, scale: str) -> List[MatrixState]:
    """A :class:`MatrixState` for every 2-D trainable, with r = min(rank, m, n)."""
    states = []
    for t in trainables:
        if not t.is_matrix or t.param.numel() == 0:
            continue
        m, n = t.param.shape
        r = min(rank, m, n)
        factor = math.sqrt(m * n) / r if scale == "subzero" else 1.0
        states.append(MatrixState(t, r, factor, fnv1a32(t.name + "#Z")))
    return states


def probe_operators(states: Sequence[MatrixState], seeds: Sequence[int], rhos: Sequence[float]
                    ) -> List[pgap_kernels.GaussianSum]:
    """The implicit S = (1/h) sum_j rho_j Xi_j of every matrix (Xi_j keyed like ``perturb_``)."""
    coeffs = [rho / len(rhos) for rho in rhos]
    return [pgap_kernels.GaussianSum(*s.shape, list(seeds), coeffs, key=s.trainable.key,
                                     device=s.trainable.param.device) for s in states]


def set_probe_bases(states: Sequence[MatrixState], operators: Sequence[pgap_kernels.GaussianSum],
                    *, oversample: int, n_iter: int, seed: int) -> None:
    """U, V = top-r singular vectors of each S by :func:`pgap_kernels.randomized_svd` (batched
    per shape and rank); S_r = diag(sigma), which equals U^T S V for the HMT algorithm."""
    by_rank: Dict[int, List[int]] = {}
    for i, s in enumerate(states):
        by_rank.setdefault(s.rank, []).append(i)
    for rank, idx in by_rank.items():
        results = pgap_kernels.randomized_svd([operators[i] for i in idx], rank,
                                              oversample=oversample, n_iter=n_iter, seed=seed)
        for i, (u, sigma, v) in zip(idx, results):
            states[i].U, states[i].V, states[i].S = u.contiguous(), v.contiguous(), torch.diag(sigma)


def set_random_bases(states: Sequence[MatrixState], seed: int) -> None:
    """U, V = Q factors of stream Gaussians (m x r, n x r; keys FNV-1a of name+"#U"/"#V"):
    SubZero's random subspace. S_r is left unset (see :func:`project_probe`)."""
    for s in states:
        m, n = s.shape
        dev = s.trainable.param.device
        gu = pgap_kernels.gaussian((m, s.rank), seed, key=fnv1a32(s.name + "#U"), device=dev)
        gv = pgap_kernels.gaussian((n, s.rank), seed, key=fnv1a32(s.name + "#V"), device=dev)
        s.U = torch.linalg.qr(gu).Q.contiguous()
        s.V = torch.linalg.qr(gv).Q.contiguous()
        s.S = torch.zeros(s.rank, s.rank, device=dev)


def project_probe(states: Sequence[MatrixState], operators: Sequence[pgap_kernels.GaussianSum]) -> None:
    """S_r = U^T (S V) for fixed bases, through one implicit sketch per matrix."""
    for s, op in zip(states, operators):
        s.S = (s.U.T @ (op @ s.V)).contiguous()
