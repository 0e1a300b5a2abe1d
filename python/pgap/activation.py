"""Activation bases: for every trained matrix W (m × n) used as an ``nn.Linear`` weight, an
orthonormal basis V (n × r) of the dominant directions of the layer's inputs, estimated during
forwards the optimizer chooses, without keeping activations.

A linear layer's gradient is Σ_t δ_t·x_tᵀ: its rows lie in the span of the inputs x_t. So a
perturbation Ξ·Vᵀ (Ξ m × r Gaussian) with V spanning the dominant inputs holds most of the
gradient (AGZO, arXiv 2601.17261; measured on SmolLM2 in docs/agzo.md).

How a basis is kept: a warm-start block Q (n × k, k = r + oversample, orthonormal). While a forward
is captured, a forward pre-hook on each user module adds Xᵀ·(X·Q) to a sketch Y (n × k), X being
that call's inputs (tokens × n, padded tokens dropped when a token mask is set); nothing of size
tokens × n outlives the hook call. At the end of the capture, Y = Ũ·Σ·Wᵀ (thin SVD, each column's sign fixed so
that its largest entry is positive): Q ← Ũ, V ← Q[:, :r], and the singular values estimate the eigenvalues of Σ_t x_t x_tᵀ (``sigma`` holds
their square roots, the activations' singular values). That is one step of orthogonal iteration
warm-started from the previous basis; the first capture starts from a seeded random Q (a
randomized range finder with oversampling).

The sketch is a sum over the hook calls, so it is additive over tokens: data-parallel ranks sum
their sketches before the SVD and get the same V as one process holding the whole batch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

import torch
from torch import nn

import pgap_kernels

from .distributed import LossReducer
from .mechanism import Mechanism
from .params import Trainable
from .seeds import fnv1a32


@dataclass
class ActivationBasis:
    """Basis state of one matrix (float32, on the parameter's device).

    ``Q`` (n × k) is the warm start, ``V`` = Q[:, :rank] (contiguous) the basis in use, ``sigma``
    (k,) the activations' singular-value estimates (None before the first capture); ``sketch``
    accumulates Xᵀ·X·Q during a capture and ``tokens`` counts the rows it saw.
    """
    trainable: Trainable
    rank: int
    width: int
    modules: List[nn.Module] = field(default_factory=list)
    Q: Optional[torch.Tensor] = None
    V: Optional[torch.Tensor] = None
    sigma: Optional[torch.Tensor] = None
    sketch: Optional[torch.Tensor] = None
    tokens: int = 0

    @property
    def name(self) -> str:
        return self.trainable.name

    @property
    def shape(self):
        return tuple(self.trainable.shape)

    @property
    def ready(self) -> bool:
        return self.V is not None


def linear_users(model: nn.Module, trainables: Sequence[Trainable]) -> dict:
    """For each 2-D trainable (by ``id`` of the parameter), the ``nn.Linear`` modules that use it
    as ``.weight`` (a tied ``lm_head`` included; an embedding sharing the weight is not a user)."""
    wanted = {id(t.param): t for t in trainables if t.is_matrix}
    users: dict = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in wanted:
            users.setdefault(id(module.weight), []).append(module)
    return users


def make_bases(model: nn.Module, trainables: Sequence[Trainable], rank: int, oversample: int
               ) -> List[ActivationBasis]:
    """An :class:`ActivationBasis` for every non-empty trainable matrix that an ``nn.Linear``
    uses, r = min(rank, n), k = min(rank + oversample, n)."""
    users = linear_users(model, trainables)
    out = []
    for t in trainables:
        mods = users.get(id(t.param))
        if not mods or 0 in t.shape:
            continue
        n = t.shape[1]
        out.append(ActivationBasis(t, min(rank, n), min(rank + oversample, n), mods))
    return out


def random_start(basis: ActivationBasis, seed: int) -> torch.Tensor:
    """A seeded orthonormal n × k block (stream key FNV-1a of name + "#act")."""
    n = basis.shape[1]
    g = pgap_kernels.gaussian((n, basis.width), seed, key=fnv1a32(basis.name + "#act"),
                              device=basis.trainable.local.device)
    return torch.linalg.qr(g).Q.contiguous()


def canonical_signs(u: torch.Tensor) -> torch.Tensor:
    """``u`` with each column's sign fixed so that its largest-magnitude entry is positive: the
    SVD's sign is arbitrary (it differs between LAPACK builds and devices), the basis must not be."""
    idx = u.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(torch.gather(u, 0, idx))
    return u * torch.where(signs == 0, torch.ones_like(signs), signs)


class ActivationSketcher(Mechanism):
    """Forward pre-hooks that feed the bases' sketches while :meth:`capture` is active.

    ``token_mask`` (set with :meth:`set_token_mask`): a (batch, seq) mask; a hook input shaped
    (batch, seq, n) keeps only the rows where it is non-zero. Other input shapes use every row.
    """

    def __init__(self, bases: Sequence[ActivationBasis]) -> None:
        self.bases = list(bases)
        self.active = False
        self.first_half = False  # paired forwards: sketch only the first half's rows (θ + ε·P)
        self.token_mask: Optional[torch.Tensor] = None
        self._handles = [m.register_forward_pre_hook(self._hook(b))
                         for b in self.bases for m in b.modules]

    def set_token_mask(self, mask: Optional[torch.Tensor]) -> None:
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
            raise ValueError("token_mask must be a (batch, seq) tensor or None, got "
                             f"{type(mask).__name__}{'' if not isinstance(mask, torch.Tensor) else tuple(mask.shape)}")
        self.token_mask = mask

    def _rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        rows = x.detach().reshape(-1, n).to(torch.float32)
        mask = self.token_mask
        if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            rows = rows[mask.reshape(-1).to(device=rows.device, dtype=torch.bool)]
        return rows

    def _hook(self, basis: ActivationBasis):
        def hook(module: nn.Module, inputs) -> None:
            if not self.active or basis.sketch is None:
                return None
            x = inputs[0][: inputs[0].shape[0] // 2] if self.first_half else inputs[0]
            X = self._rows(x, basis.shape[1])
            if X.shape[0] == 0:
                return None
            basis.sketch.add_(X.T @ (X @ basis.Q))
            basis.tokens += X.shape[0]
            return None
        return hook

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Sketch every basis during the forwards inside the block; the sketches are zeroed
        first and kept afterwards for :meth:`finish`, or dropped if the block raises."""
        for b in self.bases:
            b.sketch = torch.zeros_like(b.Q)
            b.tokens = 0
        self.active = True
        try:
            yield
        except BaseException:
            for b in self.bases:
                b.sketch = None
            raise
        finally:
            self.active = False

    def finish(self, reducer: Optional[LossReducer] = None) -> int:
        """Turn the captured sketches into new bases (summed over ranks first); returns how many
        bases changed. A basis whose sketch saw no token keeps its old basis."""
        todo = [b for b in self.bases if b.sketch is not None]
        if reducer is not None and todo:
            flat = torch.cat([b.sketch.reshape(-1) for b in todo]
                             + [torch.tensor([float(b.tokens) for b in todo], device=todo[0].sketch.device)])
            reducer.sum_(flat)
            pos = 0
            for b in todo:
                size = b.sketch.numel()
                b.sketch.copy_(flat[pos:pos + size].view_as(b.sketch))
                pos += size
            for b, tokens in zip(todo, flat[pos:].tolist()):
                b.tokens = int(tokens)
        changed = 0
        for b in todo:
            if b.tokens > 0 and bool(torch.isfinite(b.sketch).all()):
                u, s, _ = torch.linalg.svd(b.sketch, full_matrices=False)
                u = canonical_signs(u)
                b.Q = u.contiguous()
                b.V = u[:, :b.rank].contiguous()
                b.sigma = s.clamp_min(0).sqrt()
                changed += 1
            b.sketch = None
        return changed

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
