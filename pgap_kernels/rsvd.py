"""Batched randomized SVD (Halko–Martinsson–Tropp) of dense or implicit Gaussian-sum matrices."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, Union

import torch

from ._checks import FLOAT_DTYPES, check_int
from ._stream import SEED_LIMIT
from .gaussian_sum import GaussianSum, batch_key, sketch_many
from .perturb import gaussian

RSVD_KEY = 0x52535644  # stream key of the test matrices ("RSVD")

Operand = Union[torch.Tensor, GaussianSum]
Triple = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Apply = Callable[[torch.Tensor], torch.Tensor]  # (B, k, q) -> (B, rows, q)


def gaussian_test_matrix(n: int, q: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The n x q Gaussian test matrix: Omega[i, c] = xi(seed, RSVD_KEY, i*q + c)."""
    return gaussian((n, q), seed, key=RSVD_KEY, device=device).to(dtype)


def _orthonormal(y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(y, mode="reduced").Q


def _sign_fix(u: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flip each singular pair so that the largest-magnitude entry of U's column is positive
    (the first such entry on ties)."""
    idx = u.abs().argmax(dim=-2, keepdim=True)
    signs = torch.sign(torch.gather(u, -2, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return u * signs, v * signs


def _hmt(apply: Apply, apply_t: Apply, batch: int, m: int, n: int, rank: int, oversample: int,
         n_iter: int, seed: int, device: torch.device, dtype: torch.dtype) -> Triple:
    """Randomized range finder with power iterations, then the SVD of the small factor.

    apply(X) = A @ X for X (B, n, q); apply_t(Y) = A.T @ Y for Y (B, m, q).
    """
    q = min(rank + oversample, m, n)
    omega = gaussian_test_matrix(n, q, seed, device, dtype).expand(batch, n, q)
    basis = _orthonormal(apply(omega))                    # (B, m, q)
    for _ in range(n_iter):
        basis = _orthonormal(apply(_orthonormal(apply_t(basis))))
    bt = apply_t(basis)                                   # (B, n, q) = (Q^T A)^T
    p, s, wh = torch.linalg.svd(bt, full_matrices=False)  # bt = P diag(s) Wh
    u = basis @ wh.mT                                     # A ~ (Q Wh^T) diag(s) P^T
    u, v = _sign_fix(u[..., :rank], p[..., :rank])
    return u, s[..., :rank], v


def _check_common(rank, oversample, n_iter, seed) -> Tuple[int, int, int, int]:
    rank = check_int(rank, "rank", 1, 1 << 62)
    oversample = check_int(oversample, "oversample", 0, 1 << 62)
    n_iter = check_int(n_iter, "n_iter", 0, 1 << 16)
    seed = check_int(seed, "seed", 0, SEED_LIMIT)
    return rank, oversample, n_iter, seed


def _check_rank(rank: int, m: int, n: int, name: str) -> None:
    if rank > min(m, n):
        raise ValueError(f"rank {rank} exceeds min(m, n) = {min(m, n)} of {name} ({m} x {n})")


def _dense_svd(A: torch.Tensor, rank: int, oversample: int, n_iter: int, seed: int) -> Triple:
    """A (..., m, n): batched over the leading dims."""
    m, n = A.shape[-2:]
    dtype = torch.float64 if A.dtype == torch.float64 else torch.float32
    lead = A.shape[:-2]
    a = A.reshape(-1, m, n).to(dtype)
    u, s, v = _hmt(lambda x: a @ x, lambda y: a.mT @ y, a.shape[0], m, n, rank, oversample, n_iter,
                   seed, A.device, dtype)
    return u.reshape(*lead, m, rank), s.reshape(*lead, rank), v.reshape(*lead, n, rank)


def _implicit_svd(ops: List[GaussianSum], rank: int, oversample: int, n_iter: int,
                  seed: int) -> List[Triple]:
    """Operators sharing seeds, coefficients, orientation and shape: one batched sketch each."""
    transposed = [op.transpose() for op in ops]

    def run(operators: List[GaussianSum]) -> Apply:
        return lambda x: torch.stack(sketch_many(operators, list(x.unbind(0))))

    m, n = ops[0].shape
    u, s, v = _hmt(run(ops), run(transposed), len(ops), m, n, rank, oversample, n_iter, seed,
                   ops[0].device, torch.float32)
    return [(u[b], s[b], v[b]) for b in range(len(ops))]


def _check_operand(a, name: str) -> Operand:
    if isinstance(a, GaussianSum):
        return a
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a GaussianSum, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"{name} has dtype {a.dtype}; expected float32, float64, bfloat16 or float16")
    if a.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., m, n), got shape {tuple(a.shape)}")
    return a


def randomized_svd(A: Union[Operand, Sequence[Operand]], rank: int, *, oversample: int = 10,
                   n_iter: int = 2, seed: int = 0) -> Union[Triple, List[Triple]]:
    """Top-``rank`` SVD ``A ~ U diag(S) V^T`` by Halko–Martinsson–Tropp with power iterations.

    Parameters
    ----------
    A : Tensor (..., m, n), GaussianSum, or a sequence of 2-D Tensors / GaussianSums
        Dense tensors are batched over leading dims (computed in float32, float64 kept);
        a GaussianSum is only touched through :func:`gaussian_sketch` (never m x n in memory).
        A sequence is solved in batches of equal shape (and, for GaussianSums, equal seeds and
        coefficients: one batched sketch per pass), and returns a list.
    rank : int, 1 <= rank <= min(m, n)
    oversample : int >= 0
        Extra sketch columns: q = min(rank + oversample, m, n).
    n_iter : int >= 0
        Power iterations (each costs two more passes over A).
    seed : int in [0, 2**64)
        Seed of the test matrix Omega[i, c] = xi(seed, RSVD_KEY, i*q + c) (docs/rng.md).

    Returns
    -------
    (U, S, V) per input: U (..., m, rank), S (..., rank), V (..., n, rank), float32 (float64 for
    float64 input), on A's device (a GaussianSum's ``device``). Columns of U and V are
    orthonormal, S is descending and non-negative.
    Sign convention: each pair (U[:, i], V[:, i]) is flipped so that the entry of largest
    magnitude of U[:, i] is positive. The result depends only on A, rank, oversample, n_iter and
    seed (not on batching), so it is deterministic for a given seed on a given backend.

    Passes over A: 2 + 2*n_iter products (A @ X or A^T @ Y).
    """
    rank, oversample, n_iter, seed = _check_common(rank, oversample, n_iter, seed)
    if isinstance(A, (torch.Tensor, GaussianSum)):
        a = _check_operand(A, "A")
        m, n = a.shape[-2:]
        _check_rank(rank, m, n, "A")
        if isinstance(a, GaussianSum):
            return _implicit_svd([a], rank, oversample, n_iter, seed)[0]
        return _dense_svd(a, rank, oversample, n_iter, seed)
    if isinstance(A, (str, bytes)) or not isinstance(A, Sequence):
        raise TypeError(f"A must be a Tensor, a GaussianSum or a sequence of them, got {type(A).__name__}")
    items = [_check_operand(a, f"A[{i}]") for i, a in enumerate(A)]
    groups = {}
    for i, a in enumerate(items):
        if isinstance(a, torch.Tensor) and a.dim() != 2:
            raise ValueError(f"A[{i}] must be 2-D inside a list, got shape {tuple(a.shape)}")
        _check_rank(rank, a.shape[0], a.shape[1], f"A[{i}]")
        key = (("implicit",) + batch_key(a) + (str(a.device),) if isinstance(a, GaussianSum)
               else ("dense", tuple(a.shape), a.dtype, str(a.device)))
        groups.setdefault(key, []).append(i)
    out: List[Triple] = [None] * len(items)  # type: ignore[list-item]
    for key, idx in groups.items():
        if key[0] == "implicit":
            results = _implicit_svd([items[i] for i in idx], rank, oversample, n_iter, seed)
        else:
            u, s, v = _dense_svd(torch.stack([items[i] for i in idx]), rank, oversample, n_iter, seed)
            results = list(zip(u.unbind(0), s.unbind(0), v.unbind(0)))
        for i, r in zip(idx, results):
            out[i] = r
    return out


def randomized_svd_operator(matmul: Apply, rmatmul: Apply, m: int, n: int, rank: int, *,
                            batch: int = 1, oversample: int = 10, n_iter: int = 2, seed: int = 0,
                            device=None) -> Triple:
    """:func:`randomized_svd` of a batch of m x n linear operators known only by their products,
    e.g. a matrix whose rows live on several ranks (the caller gathers and reduces).

    ``matmul(X)`` must return A @ X for X (batch, n, q) as (batch, m, q) float32, and
    ``rmatmul(Y)`` A^T @ Y for Y (batch, m, q) as (batch, n, q). The test matrix, the algorithm,
    the sign convention and the returned shapes are those of :func:`randomized_svd` (U (batch, m,
    rank), S (batch, rank), V (batch, n, rank), float32), so for the same operator both return the
    same factors up to floating-point summation order.
    """
    rank, oversample, n_iter, seed = _check_common(rank, oversample, n_iter, seed)
    m, n = check_int(m, "m", 1, 1 << 62), check_int(n, "n", 1, 1 << 62)
    batch = check_int(batch, "batch", 1, 1 << 62)
    _check_rank(rank, m, n, "the operator")
    if not (callable(matmul) and callable(rmatmul)):
        raise TypeError("matmul and rmatmul must be callables")
    dev = torch.device("cpu") if device is None else torch.device(device)
    return _hmt(matmul, rmatmul, batch, m, n, rank, oversample, n_iter, seed, dev, torch.float32)
