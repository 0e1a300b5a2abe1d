"""P-GAP's per-matrix subspace state and how a window's bases are estimated.

For each trainable matrix W (m x n) a window keeps U (m x r), V (n x r) with orthonormal columns
and the r x r projected gradient S_r = U^T S V of the probe estimate S = (1/h) sum_j rho_j Xi_j,
where Xi_j is probe j's Gaussian block of W (stream key = W's key). S is never materialized: it is
a :class:`pgap_kernels.GaussianSum`.

Sharded matrices (FSDP2, rows split over ranks): U's rows follow W's rows, V and S_r are
replicated. Each rank sketches its own rows of S; the randomized SVD gathers the m x q sketches
and all-reduces the S^T Q products (:func:`set_probe_bases` with a ``reducer``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

import pgap_kernels

from .distributed import LossReducer
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
        """Global (m, n)."""
        return tuple(self.trainable.shape)

    @property
    def local_rows(self) -> slice:
        """The rows of W (and of U) this rank holds."""
        start = self.trainable.row_offset
        return slice(start, start + self.trainable.local.shape[0])

    @property
    def name(self) -> str:
        return self.trainable.name


def make_states(trainables: Sequence[Trainable], rank: int, scale: str) -> List[MatrixState]:
    """A :class:`MatrixState` for every 2-D trainable, with r = min(rank, m, n)."""
    states = []
    for t in trainables:
        if not t.is_matrix or math.prod(t.shape) == 0:
            continue
        m, n = t.shape
        r = min(rank, m, n)
        factor = math.sqrt(m * n) / r if scale == "subzero" else 1.0
        states.append(MatrixState(t, r, factor, fnv1a32(t.name + "#Z")))
    return states


def probe_operators(states: Sequence[MatrixState], seeds: Sequence[int], rhos: Sequence[float]
                    ) -> List[pgap_kernels.GaussianSum]:
    """The implicit S = (1/h) sum_j rho_j Xi_j of every matrix (Xi_j keyed like ``perturb_``);
    for a sharded matrix only this rank's rows (the block at the shard's global offset)."""
    coeffs = [rho / len(rhos) for rho in rhos]
    return [pgap_kernels.GaussianSum(s.trainable.local.shape[0], s.shape[1], list(seeds), coeffs,
                                     key=s.trainable.key, offset=s.trainable.offset,
                                     device=s.trainable.local.device) for s in states]


def set_probe_bases(states: Sequence[MatrixState], operators: Sequence[pgap_kernels.GaussianSum],
                    *, oversample: int, n_iter: int, seed: int,
                    reducer: Optional[LossReducer] = None) -> None:
    """U, V = top-r singular vectors of each S by :func:`pgap_kernels.randomized_svd` (batched
    per shape and rank); S_r = diag(sigma), which equals U^T S V for the HMT algorithm. Sharded
    matrices (with a ``reducer``) go through :func:`_sharded_svd`, same factors up to rounding."""
    groups: Dict[tuple, List[int]] = {}
    for i, s in enumerate(states):
        sharded = s.trainable.sharded and reducer is not None
        groups.setdefault((sharded, s.rank) + (s.shape if sharded else ()), []).append(i)
    for (sharded, rank, *_), idx in groups.items():
        ops = [operators[i] for i in idx]
        if sharded:
            results = _sharded_svd([states[i] for i in idx], ops, rank, reducer,
                                   oversample=oversample, n_iter=n_iter, seed=seed)
        else:
            results = pgap_kernels.randomized_svd(ops, rank, oversample=oversample, n_iter=n_iter,
                                                  seed=seed)
        for i, (u, sigma, v) in zip(idx, results):
            states[i].U, states[i].V, states[i].S = u.contiguous(), v.contiguous(), torch.diag(sigma)


def _sharded_svd(states: Sequence[MatrixState], ops: Sequence[pgap_kernels.GaussianSum], rank: int,
                 reducer: LossReducer, **options) -> List[tuple]:
    """Randomized SVD of row-sharded implicit matrices of one global shape (same on every rank,
    collectives in the same order everywhere): A @ X sketches the local rows and all-gathers the
    m x q result; A^T @ Y multiplies the local rows of Y and all-reduces the n x q sum. Returns
    (U's local rows, sigma, V) per matrix."""
    (m, n), rows = states[0].shape, states[0].local_rows
    problems = [op.problem for op in ops]
    first = ops[0]

    def sketch(omegas: List[torch.Tensor], transpose: bool) -> torch.Tensor:
        return torch.stack(pgap_kernels.gaussian_sketch_batch(problems, first.seeds, first.coeffs,
                                                              omegas, transpose=transpose))

    def matmul(x: torch.Tensor) -> torch.Tensor:       # (B, n, q) -> (B, m, q)
        local = sketch(list(x.unbind(0)), False)       # (B, local rows, q)
        return reducer.gather_rows(local.transpose(0, 1).contiguous()).transpose(0, 1)

    def rmatmul(y: torch.Tensor) -> torch.Tensor:      # (B, m, q) -> (B, n, q)
        local = sketch([t.contiguous() for t in y[:, rows].unbind(0)], True)
        return reducer.sum_(local)

    u, sigma, v = pgap_kernels.randomized_svd_operator(matmul, rmatmul, m, n, rank, batch=len(ops),
                                                       device=first.device, **options)
    return [(u[b, rows], sigma[b], v[b]) for b in range(len(ops))]


def set_random_bases(states: Sequence[MatrixState], seed: int) -> None:
    """U, V = Q factors of stream Gaussians (m x r, n x r; keys FNV-1a of name+"#U"/"#V"):
    SubZero's random subspace (U: this rank's rows). S_r is left unset (see
    :func:`project_probe`)."""
    for s in states:
        m, n = s.shape
        dev = s.trainable.local.device
        gu = pgap_kernels.gaussian((m, s.rank), seed, key=fnv1a32(s.name + "#U"), device=dev)
        gv = pgap_kernels.gaussian((n, s.rank), seed, key=fnv1a32(s.name + "#V"), device=dev)
        s.U = torch.linalg.qr(gu).Q[s.local_rows].contiguous()
        s.V = torch.linalg.qr(gv).Q.contiguous()
        s.S = torch.zeros(s.rank, s.rank, device=dev)


def project_probe(states: Sequence[MatrixState], operators: Sequence[pgap_kernels.GaussianSum],
                  reducer: Optional[LossReducer] = None) -> None:
    """S_r = U^T (S V) for fixed bases, through one implicit sketch per matrix (summed over the
    ranks' rows for a sharded matrix)."""
    for s, op in zip(states, operators):
        s.S = (s.U.T @ (op @ s.V)).contiguous()
        if s.trainable.sharded and reducer is not None:
            reducer.sum_(s.S)
