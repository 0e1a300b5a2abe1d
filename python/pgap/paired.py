"""Paired forwards: both points of a two-point estimate in one forward over a doubled batch.

A pair closure runs the model once on the step's batch stacked twice along dim 0 (rows 2B) and
returns the two halves' losses. While a pair is shown (:meth:`pgap.views.PerturbedViews.show`
with ``paired=True``), every module that owns a trainable runs its forward once per half: the
first B rows with its θ + d copies, the last B rows with its θ − d copies (a plain ``nn.Linear``
writes both into one output). The other modules (attention, activations, the loss, and the
weight products of the side-path matrices of AGZO, P-GAP and SubZero, which are never copied) run once over 2B rows.
The − copies are drawn again (default) or mirrored from the + copies, 2θ − (θ + d)
(:func:`mirror_`, no second draw; for bf16 weights a different estimate: docs/optimizers.md).

Requirement: each module that owns a trainable receives its batch-major inputs with the doubled
batch as dim 0 (true for ``nn.Linear``, ``nn.Embedding``, the norms and Hugging Face decoders,
which keep (batch, seq, ...) or flatten it batch-major); a module called with another leading
size raises ``ValueError`` (the step then takes the weights back to θ).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .autocast import active_dtype

PairLosses = Any  # a tensor of two losses, a pair of scalars, or (either, weight)
# the methods (pgap.methods names) whose functional mode takes paired forwards, for messages
PAIRED_METHODS = "mezo, mezo-gv, mezo-greedy, ldsd, agzo, pgap or subzero"
PairClosure = Callable[[], PairLosses]


def mirror_(out: torch.Tensor, plus: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``out`` ← 2·θ − plus (``torch.lerp(plus, θ, 2)``: θ + (θ − plus) in float32, rounded once
    to bf16/fp16): the copy θ − d from the copy θ + d without drawing d again. In float32 it is
    θ − d up to a few roundings; in bf16/fp16 it carries plus's rounding error mirrored, so the
    two copies stay symmetric about θ. Mutates ``out``; shapes and dtypes equal."""
    return torch.lerp(plus, theta, 2.0, out=out)


def split_halves(value: Any, rows: int) -> Tuple[Any, Any]:
    """``value`` (a tensor, or a tuple/list/dict of them, nested) cut into its first and last
    ``rows // 2`` rows wherever a tensor has ``rows`` leading rows; everything else goes to both
    halves unchanged."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == rows:
            return value[: rows // 2], value[rows // 2:]
        return value, value
    if isinstance(value, (tuple, list)):
        pairs = [split_halves(v, rows) for v in value]
        return type(value)(p[0] for p in pairs), type(value)(p[1] for p in pairs)
    if isinstance(value, dict):
        pairs = {k: split_halves(v, rows) for k, v in value.items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    return value, value


def join_halves(first: Any, second: Any, where: str) -> Any:
    """The outputs of the two halves as one: tensors concatenated along dim 0, tuples/lists/dicts
    element by element, ``None`` kept; ``ValueError`` naming ``where`` for anything else."""
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return torch.cat([first, second])
    if first is None and second is None:
        return None
    if isinstance(first, (tuple, list)) and type(first) is type(second) and len(first) == len(second):
        return type(first)(join_halves(a, b, where) for a, b in zip(first, second))
    if isinstance(first, dict) and isinstance(second, dict) and first.keys() == second.keys():
        return type(first)((k, join_halves(first[k], second[k], where)) for k in first)
    raise ValueError(f"paired forward: {where} returned {type(first).__name__}, which cannot be "
                     "joined along the batch; use the unpaired step (no pair_closure)")


def check_token_halves(first: Optional[torch.Tensor], second: Optional[torch.Tensor], where: str) -> None:
    """ValueError unless an embedding's two halves of token ids are equal: a pair closure runs
    the step's batch stacked twice (checked where it is cheap and certain: at the embeddings)."""
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and \
            first.shape == second.shape and torch.equal(first, second):
        return
    raise ValueError(f"paired forward: {where} got two different halves of token ids; a pair "
                     "closure runs the step's batch stacked twice along dim 0 "
                     "(torch.cat([batch, batch]))")


def first_rows(args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[int]:
    """The leading size of the first tensor among ``args`` then ``kwargs`` (None: no tensor)."""
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None


class HalfRunner:
    """Runs the owning modules' forwards once per half while a pair is shown (an embedding's two
    halves of token ids must be equal: :func:`check_token_halves`).

    ``minus_of(name)`` gives the θ − d copy of trainable ``name`` while its θ + d copy is swapped
    in (None otherwise). ``install(owners)`` replaces the forward of each ``(module, [(attribute,
    trainable name)])`` by one that splits the batch (or, nested inside another owner's half,
    uses that half's copies); ``remove()`` puts the forwards back.
    """

    def __init__(self, minus_of: Callable[[str], Optional[torch.Tensor]]) -> None:
        self.minus_of = minus_of
        self.half: Optional[int] = None  # 0 or 1 inside an owner's half, else None
        self.rows: Optional[int] = None  # the doubled batch of this pair (set by the first call)
        self._installed: List[Tuple[nn.Module, bool, Any]] = []

    def reset(self) -> None:
        """A new pair: the doubled batch is read again from the next call."""
        self.half, self.rows = None, None

    def install(self, owners: Sequence[Tuple[nn.Module, List[Tuple[str, str]]]]) -> None:
        if self._installed:
            return
        for module, names in owners:
            had = "forward" in module.__dict__
            previous = module.__dict__.get("forward")
            # an nn.Linear running its class's own forward gets the concatenation-free path
            plain_linear = not had and type(module).forward is nn.Linear.forward
            module.forward = self._forward(module, module.forward, names, plain_linear)
            self._installed.append((module, had, previous))

    def remove(self) -> None:
        for module, had, previous in reversed(self._installed):
            if had:
                module.forward = previous
            else:
                del module.forward
        self._installed = []
        self.reset()

    @contextlib.contextmanager
    def _minus_of_module(self, module: nn.Module, names: List[Tuple[str, str]], active: bool = True
                         ) -> Iterator[None]:
        """Inside the block ``module``'s θ + d copies are swapped for their θ − d copies (when
        ``active``); swapped back on the way out, whatever happens."""
        back = []
        if active:
            for attr, name in names:
                minus = self.minus_of(name)
                if minus is not None:
                    p = module._parameters[attr]
                    back.append((p, p.data))
                    p.data = minus
        try:
            yield
        finally:
            for p, data in back:
                p.data = data

    def _linear_halves(self, module: nn.Module, names: List[Tuple[str, str]], x: torch.Tensor) -> torch.Tensor:
        """An ``nn.Linear`` over both halves of a contiguous batch-major ``x``, each half's product
        written into its rows of one output (no concatenation): the first with the θ + d copies,
        the second with the θ − d copies. Under no_grad only (``out=``). Inside an autocast
        region (a low-precision dtype for x's device) the operands are cast to its dtype first, as
        autocast casts ``F.linear``'s (``mm(out=)`` itself is not autocast)."""
        compute = active_dtype(x.device.type)
        cast = (lambda t: t) if compute is None else (lambda t: t.to(compute))  # noqa: E731
        flat = cast(x.reshape(-1, x.shape[-1]))
        half = flat.shape[0] // 2
        out = torch.empty(flat.shape[0], module.out_features, dtype=flat.dtype, device=x.device)
        for i, rows in enumerate((slice(0, half), slice(half, None))):
            with self._minus_of_module(module, names, active=i == 1):
                if module.bias is None:
                    torch.mm(flat[rows], cast(module.weight).t(), out=out[rows])
                else:
                    torch.addmm(cast(module.bias), flat[rows], cast(module.weight).t(), out=out[rows])
        return out.view(*x.shape[:-1], module.out_features)

    def _forward(self, module: nn.Module, original: Callable[..., Any], names: List[Tuple[str, str]],
                 plain_linear: bool = False):
        label = f"{type(module).__name__} owning {names[0][1]!r}"

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.half is not None:  # inside an owner's half: that half's copies, no split
                with self._minus_of_module(module, names, active=self.half == 1):
                    return original(*args, **kwargs)
            if not any(self.minus_of(name) is not None for _, name in names):
                return original(*args, **kwargs)  # nothing shown here: both halves see θ
            rows = first_rows(args, kwargs)
            if rows is None or rows % 2 or (self.rows is not None and rows != self.rows):
                expected = "an even number" if self.rows is None else str(self.rows)
                raise ValueError(f"paired forward: {label} was called with {rows} leading rows, "
                                 f"expected {expected} (the step's batch stacked twice along "
                                 "dim 0, batch-major); use the unpaired step (no pair_closure)")
            self.rows = rows
            if plain_linear and len(args) == 1 and not kwargs and args[0].is_contiguous() \
                    and not torch.is_grad_enabled():
                return self._linear_halves(module, names, args[0])
            a1, a2 = split_halves(args, rows)
            k1, k2 = split_halves(kwargs, rows)
            if isinstance(module, nn.Embedding):
                check_token_halves(a1[0] if a1 else None, a2[0] if a2 else None, label)
            try:
                self.half = 0
                out1 = original(*a1, **k1)
                self.half = 1
                with self._minus_of_module(module, names):
                    out2 = original(*a2, **k2)
            finally:
                self.half = None
            return join_halves(out1, out2, label)

        return forward


def half_slices(x: torch.Tensor, where: str) -> List[slice]:
    """The first and last half of a paired forward's leading rows of ``x``; ValueError naming
    ``where`` when there are none or an odd number."""
    rows = x.shape[0] if x.dim() else 0
    if rows == 0 or rows % 2:
        raise ValueError(f"paired forward: {where} got {rows} leading rows; a pair closure runs the "
                         "step's batch stacked twice along dim 0")
    return [slice(0, rows // 2), slice(rows // 2, rows)]


def _two_losses(x: Any) -> Optional[Tuple[Any, Any]]:
    """``x`` as two losses (a tensor of 2 values, or a pair of scalars / one-element tensors)."""
    if isinstance(x, torch.Tensor):
        return (x.reshape(-1)[0], x.reshape(-1)[1]) if x.numel() == 2 else None
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(
            isinstance(v, (float, int)) or (isinstance(v, torch.Tensor) and v.numel() == 1) for v in x):
        return x[0], x[1]
    return None


def pair_losses(out: PairLosses) -> Tuple[Tuple[Any, Any], float]:
    """A pair closure's return value as ((L+, L−), weight): a tensor of two losses or a pair of
    scalars, optionally as ``(losses, weight)`` (weight 1 when omitted)."""
    losses, weight = out, 1.0
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (int, float)) \
            and _two_losses(out[0]) is not None:
        losses, weight = out
    pair = _two_losses(losses)
    if pair is None:
        raise TypeError("a pair closure returns the two halves' losses: a tensor of 2 values or a "
                        "pair of scalars (optionally as (losses, weight)); got "
                        f"{type(out).__name__}")
    return pair, float(weight)
