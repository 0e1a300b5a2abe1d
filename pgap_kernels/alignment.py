"""P-GAP's gradient-aligned projection of a Gaussian perturbation (batched, any device)."""
from __future__ import annotations

from typing import Union

import torch

from ._checks import check_finite

Scalar = Union[float, torch.Tensor]


def _check(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} has dtype {t.dtype}; expected a floating-point tensor")
    if t.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., r, s), got shape {tuple(t.shape)}")
    return t


def _batch_scalar(value: Scalar, name: str, batch: torch.Size, device: torch.device,
                  dtype: torch.dtype, nonnegative: bool = False) -> torch.Tensor:
    """A float or a tensor broadcastable to the batch shape, as a (..., 1, 1) tensor."""
    if isinstance(value, torch.Tensor):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite")
        if nonnegative and bool((value < 0).any()):
            raise ValueError(f"{name} must be >= 0")
        try:
            t = torch.broadcast_to(value.to(device=device, dtype=dtype), batch)
        except RuntimeError as exc:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the "
                             f"batch shape {tuple(batch)}") from exc
        return t[..., None, None]
    v = check_finite(value, name)
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return torch.full((*batch, 1, 1), v, dtype=dtype, device=device)


def aligned_perturbation(Z0: torch.Tensor, S: torch.Tensor, xi: Scalar, delta: Scalar) -> torch.Tensor:
    """Project ``Z0`` onto the hyperplane ``<S, Z>_F = xi * sqrt(delta) * ||S||_F`` along S.

    ``Z = Z0 - ((<S, Z0>_F - xi*sqrt(delta)*||S||_F) / ||S||_F**2) * S``, batched over leading
    dims: the random component of Z0 along S is replaced by one of length sqrt(delta) and sign
    xi; the part orthogonal to S is kept.

    Parameters
    ----------
    Z0 : Tensor (..., r, s), floating point
    S : Tensor broadcastable with Z0 (e.g. P-GAP's r x r projected gradient diag(sigma))
    xi : float or Tensor broadcastable to the batch shape (...), finite (P-GAP: +1 or -1)
    delta : float or Tensor broadcastable to the batch shape, finite, >= 0

    Returns
    -------
    A new tensor shaped like ``Z0 + S``, dtype of Z0 (computed in float32, or float64 for
    float64 inputs). Fallback: where ``||S||_F`` is zero or not finite, Z0 is returned
    unchanged for that batch element (no direction to align with).

    Computed as ``Z0 - (<u, Z0> - xi*sqrt(delta)) * u`` with ``u = S / ||S||_F`` after scaling S
    by its largest magnitude, so huge or tiny S neither overflows nor underflows.
    """
    _check(Z0, "Z0")
    _check(S, "S")
    if Z0.device != S.device:
        raise ValueError(f"S is on {S.device} but Z0 is on {Z0.device}")
    try:
        shape = torch.broadcast_shapes(Z0.shape, S.shape)
    except RuntimeError as exc:
        raise ValueError(f"S of shape {tuple(S.shape)} does not broadcast with Z0 of shape "
                         f"{tuple(Z0.shape)}") from exc
    work = torch.float64 if torch.float64 in (Z0.dtype, S.dtype) else torch.float32
    batch = shape[:-2]
    xi_t = _batch_scalar(xi, "xi", batch, Z0.device, work)
    delta_t = _batch_scalar(delta, "delta", batch, Z0.device, work, nonnegative=True)
    z0 = Z0.to(work).expand(shape)
    s = S.to(work).expand(shape)
    smax = s.abs().amax(dim=(-2, -1), keepdim=True)
    ok = torch.isfinite(smax) & (smax > 0)
    scaled = s / torch.where(ok, smax, torch.ones_like(smax))
    norm = torch.linalg.vector_norm(scaled, dim=(-2, -1), keepdim=True)
    unit = scaled / torch.where(ok, norm, torch.ones_like(norm))
    along = (unit * z0).sum(dim=(-2, -1), keepdim=True)
    out = z0 - (along - xi_t * torch.sqrt(delta_t)) * unit
    return torch.where(ok, out, z0).to(Z0.dtype)
