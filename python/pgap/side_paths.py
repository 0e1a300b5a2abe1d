"""Side paths (the functional modes of P-GAP and AGZO): W_eff = W + U (A + c Z) V^T applied as a
rank-r side path of the forward (hooks on nn.Linear / nn.Embedding), so W is written only when
the accumulated update is merged.
P-GAP uses U (m x r), A and Z (r x r); AGZO uses no U (the identity: A and Z are m x r)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import pgap_kernels

from .mechanism import Mechanism, RoundingFor
from .paired import check_token_halves, half_slices
from .params import Trainable


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


def add_product_(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """out += left @ right (left (..., r), right (r, k), out (..., k)), inside the GEMM (beta = 1:
    no temporary, one rounding of the sum) when out is contiguous and of left's dtype, else as
    a product cast to out's dtype and added."""
    if out.is_contiguous() and out.dtype == left.dtype == right.dtype:
        out.view(-1, out.shape[-1]).addmm_(left.reshape(-1, left.shape[-1]), right)
    else:
        out.add_((left @ right).to(out.dtype))


def pending_key(state) -> str:
    """The state key of a matrix's pending update A."""
    return f"{state.trainable.name}.A"


class SidePath(Mechanism):
    """Forward hooks adding x V M^T U^T (Linear) or U[idx] M V^T (Embedding) to the output, with
    M = A + coeff * Z for each functional matrix among ``states`` (a state whose U is None has
    no left factor). The side term is computed in float32 and cast to the output dtype, except
    for bf16 outputs, where it is computed in bf16 (V, U and M rounded to bf16, products
    accumulated in float32 by the GEMM, each product rounded to bf16): the sum output + side
    rounds to bf16 anyway, and that rounding (2^-9 of the output) is far larger than the side
    term's own (2^-9 of the side term, itself ~ε of the output); on CPUs with native bf16 the
    n × r products then run 4-6× faster than in float32 (docs/results.md, "AGZO's step"). Inside
    a step's forwards (no autograd) the last product is added to the output by the GEMM itself
    (``addmm_``, beta = 1: no temporary, the sum rounded once) where the dtypes allow; outside
    them the side term is a new tensor added to the output. ``coeff`` is the current
    perturbation coefficient (±ε inside a step, 0 otherwise). ``before_state_dict`` runs before
    ``model.state_dict()`` (the optimizer's merge, unless inside its ``unmerged()``). The pending
    A of a matrix is saved under ``"<name>.A"`` (:meth:`pending_state`). Raises ValueError for
    sharded matrices among ``states`` or, with ``weight_decay`` > 0, a decayed functional
    matrix."""

    def __init__(self, model: nn.Module, states: Sequence, weight_decay: float,
                 before_state_dict: Callable[[], None]) -> None:
        if any(s.trainable.sharded for s in states):
            raise ValueError("mode='functional' does not support sharded (FSDP2) matrices; use "
                             "mode='inplace'")
        if weight_decay > 0 and any(s.functional and s.trainable.decays for s in states):
            raise ValueError("mode='functional' does not support weight_decay > 0 on the matrices "
                             "it keeps functional; use mode='inplace' or weight_decay=0")
        self.states = [s for s in states if s.functional]
        self.coeff = 0.0
        # paired forwards (pgap.paired): the batch is stacked twice; the first half sees
        # M = A + coeff·Z, the second A − coeff·Z (x·V runs once over both)
        self.paired = False
        self._handles = []
        self._casts: Dict[int, Tuple[torch.Tensor, int, torch.Tensor]] = {}  # id -> (tensor, version, bf16)
        for s in self.states:
            for module in s.modules:
                self._handles.append(module.register_forward_hook(self._hook(s)))
        self._handles.append(model.register_state_dict_pre_hook(lambda *a, **kw: before_state_dict()))

    def _matrices(self, s, dtype: torch.dtype) -> List[torch.Tensor]:
        """``s``'s side matrices in ``dtype``: [] (no side term), [A + coeff·Z] or, when paired,
        [A + coeff·Z, A − coeff·Z], or [A] for a pending update alone."""
        if self.coeff != 0.0 and s.Z is not None:
            signs = (1.0, -1.0) if self.paired else (1.0,)
            return [(s.A + (sign * self.coeff) * s.Z).to(dtype) for sign in signs]
        return [s.A.to(dtype)] if s.accumulated else []

    def _low(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``t`` (a basis V or U, float32) in bf16, cached until ``t`` is replaced or written."""
        if t is None:
            return None
        hit = self._casts.get(id(t))
        if hit is not None and hit[0] is t and hit[1] == t._version:
            return hit[2]
        low = t.to(torch.bfloat16)
        self._casts[id(t)] = (t, t._version, low)
        if len(self._casts) > 4 * len(self.states) + 16:  # bases replaced at refreshes
            live = {id(x) for st in self.states for x in (st.V, st.U) if x is not None}
            self._casts = {k: v for k, v in self._casts.items() if k in live}
        return low

    def _hook(self, s):
        def hook(module: nn.Module, inputs, output):
            if s.V is None:
                return None
            low = output.dtype == torch.bfloat16  # see the class docstring
            Ms = self._matrices(s, torch.bfloat16 if low else torch.float32)
            if not Ms:
                return None
            pair = len(Ms) == 2
            if low:
                V, U, x = self._low(s.V), self._low(s.U), inputs[0]
            else:
                V, U = s.V, s.U
                x = inputs[0] if isinstance(module, nn.Embedding) else inputs[0].to(torch.float32)
            halves = half_slices(x, type(module).__name__) if pair else [slice(None)]
            # each half's term as a product left @ right
            if isinstance(module, nn.Embedding):
                if pair:
                    check_token_halves(x[halves[0]], x[halves[1]], type(module).__name__)
                factors = [(h, m[x[h]] if U is None else U[x[h]] @ m, V.T) for m, h in zip(Ms, halves)]
            else:
                xv = x @ V  # over both halves at once
                factors = [(h, xv[h], m.T) if U is None else (h, xv[h] @ m.T, U.T) for m, h in zip(Ms, halves)]
            if torch.is_grad_enabled():  # outside a step's forwards (paired ones run under no_grad)
                terms = [left @ right for _, left, right in factors]
                side = terms[0] if len(terms) == 1 else torch.cat(terms)
                return output + side.to(output.dtype)
            for h, left, right in factors:  # a step's forwards: into the output's rows
                add_product_(output[h], left, right)
            return output
        return hook

    def accumulate(self, alpha: float) -> None:
        """The update of a step: A += alpha·Z for every functional matrix; the perturbation
        coefficient goes back to 0."""
        self.coeff = 0.0
        for s in self.states:
            s.A.add_(s.Z, alpha=alpha)
            s.accumulated = True

    def abort(self) -> None:
        self.coeff = 0.0
        self.paired = False

    def merge(self, rounding_for: RoundingFor) -> None:
        """W += U A V^T (A V^T without U) for every matrix with a non-zero A (one batched
        ``lowrank_perturb_``, rounded as the "merge" pass says, with the matrices' stream keys
        and offsets); A is zeroed."""
        rounding = rounding_for("merge")
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

    def pending_state(self) -> Dict[str, torch.Tensor]:
        """A of every matrix that holds an update not yet merged."""
        return {pending_key(s): s.A for s in self.states if s.accumulated}

    def pending_shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {pending_key(s): tuple(s.A.shape) for s in self.states}

    def load_pending_state(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Every matrix's A := its tensor in ``tensors`` (accumulated), or zero (not accumulated)
        where absent. Mutates A in place, never the weights."""
        for s in self.states:
            saved = tensors.get(pending_key(s))
            s.accumulated = saved is not None
            if saved is None:
                s.A.zero_()
            else:
                s.A.copy_(saved)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
