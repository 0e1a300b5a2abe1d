"""Side paths (the functional modes of P-GAP and AGZO): W_eff = W + U (A + c Z) V^T applied as a
rank-r side path of the forward (hooks on nn.Linear / nn.Embedding), so W is written only when
the accumulated update is merged.
P-GAP uses U (m x r), A and Z (r x r); AGZO uses no U (the identity: A and Z are m x r)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

import pgap_kernels

from .params import Trainable
from .probe_bases import MatrixState


@dataclass
class SideState:
    """A functional matrix without a left factor (AGZO): W_eff = W + (A + c·Z)·Vᵀ with A and Z
    m × r and V n × r (float32); ``modules`` run W's forward through the side path."""
    trainable: Trainable
    V: Optional[torch.Tensor]
    A: torch.Tensor
    Z: Optional[torch.Tensor] = None
    U: None = None
    accumulated: bool = False
    functional: bool = True
    modules: list = field(default_factory=list)


def eligible_modules(model: nn.Module, states: Sequence) -> Dict[int, List[nn.Module]]:
    """For each matrix (by ``id`` of the parameter), the modules that use it as ``.weight``, when
    all of them run nn.Linear's or nn.Embedding's own forward (no ``max_norm``); otherwise the
    matrix is absent and stays in place."""
    wanted = {id(s.trainable.param) for s in states}
    users: Dict[int, List[nn.Module]] = {}
    blocked = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in wanted:
                continue
            # the module's forward must be nn.Linear's / nn.Embedding's own: subclasses with
            # their own forward (e.g. OPT's learned positional embedding) stay in place
            forward = type(module).forward
            ok = pname == "weight" and (forward is nn.Linear.forward or
                                        (forward is nn.Embedding.forward and module.max_norm is None))
            if ok:
                users.setdefault(id(p), []).append(module)
            else:
                blocked.add(id(p))
    return {k: v for k, v in users.items() if k not in blocked}


class SidePath:
    """Forward hooks adding x V M^T U^T (Linear) or U[idx] M V^T (Embedding) to the output, with
    M = A + coeff * Z for each functional matrix (computed in float32, cast to the output dtype;
    a state whose U is None has no left factor). ``coeff`` is the current perturbation
    coefficient (±ε inside a step, 0 otherwise)."""

    def __init__(self, states: Sequence) -> None:
        self.states = [s for s in states if s.functional]
        self.coeff = 0.0
        self._handles = []
        for s in self.states:
            for module in s.modules:
                self._handles.append(module.register_forward_hook(self._hook(s)))

    def _matrix(self, s) -> Optional[torch.Tensor]:
        if self.coeff != 0.0 and s.Z is not None:
            return s.A + self.coeff * s.Z
        return s.A if s.accumulated else None

    def _hook(self, s):
        def hook(module: nn.Module, inputs, output):
            if s.V is None:
                return None
            M = self._matrix(s)
            if M is None:
                return None
            if isinstance(module, nn.Embedding):
                rows = M[inputs[0]] if s.U is None else s.U[inputs[0]] @ M
                side = rows @ s.V.T
            else:
                side = (inputs[0].to(torch.float32) @ s.V) @ M.T
                if s.U is not None:
                    side = side @ s.U.T
            return output + side.to(output.dtype)
        return hook

    def merge(self, rounding: Optional[Dict] = None) -> None:
        """W += U A V^T (A V^T without U) for every matrix with a non-zero A (one batched
        ``lowrank_perturb_``, rounded as ``rounding`` says: kernel keyword arguments, with the
        matrices' stream keys and offsets added); A is zeroed."""
        todo = [s for s in self.states if s.V is not None and s.accumulated]
        if todo:
            lefts = [s.A if s.U is None else s.U for s in todo]
            mids = [torch.eye(s.A.shape[1], device=s.A.device) if s.U is None else s.A for s in todo]
            extra = dict(rounding, keys=[s.trainable.key for s in todo],
                         offsets=[s.trainable.offset for s in todo]) if rounding else {}
            with torch.no_grad():
                pgap_kernels.lowrank_perturb_([s.trainable.param for s in todo], lefts, mids,
                                              [s.V for s in todo], [1.0] * len(todo), **extra)
        for s in todo:
            s.A.zero_()
            s.accumulated = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
