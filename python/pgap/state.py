"""An optimizer's state dict (format ``pgap.optimizer/1``) through torch's own hooks.

``ZOOptimizer`` does not override ``state_dict``/``load_state_dict``: it registers
:func:`before_state_dict` (merge pending side-path updates, unless inside the optimizer's
``unmerged()``), :func:`to_pgap_state` (torch's ``{"state", "param_groups"}`` -> this format)
and :func:`from_pgap_state` (this format -> the optimizer's tensors, pending updates and
counters, and torch's form for the param groups), so hooks that users register on the optimizer
run as for any torch optimizer. The format is ``pgap.optimizer/1`` as before: a state taken
inside ``unmerged()`` adds the side paths' pending updates as tensors ``"<name>.A"`` (older
pgap versions refuse them as unexpected tensors rather than drop them); states without them,
all those saved before, load as they always did.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, Sequence, Tuple

import torch

STATE_FORMAT = "pgap.optimizer/1"


def before_state_dict(opt) -> None:
    """State-dict pre-hook of the optimizer and of its model: merge pending functional-mode
    updates (mutates the weights, side paths only), so that a model exported with
    ``state_dict()`` holds the trained weights. Inside ``opt.unmerged()`` nothing is merged
    (the optimizer's state then carries the pending updates)."""
    if not opt.keeps_pending:
        opt.merge()


def to_pgap_state(opt, packed: Dict[str, Any]) -> Dict[str, Any]:
    """State-dict post-hook: everything needed to resume exactly: step, forwards, lr group,
    hyperparameters, the parameter names and the optimizer's tensors with the mechanisms'
    pending updates (contiguous, unshared: safetensors-ready). Seeds are derived from (seed,
    step), never stored."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in packed["param_groups"]]
    return {"format": STATE_FORMAT, "optimizer": type(opt).__name__,
            "step": opt.steps_done, "forwards": opt.forwards, "param_groups": groups,
            "hyperparameters": opt.hyperparameters(),
            "parameters": [t.name for t in opt.trainables],
            "tensors": {k: v.detach().contiguous().clone()
                        for k, v in dict(opt._state_tensors(), **_pending_state(opt)).items()},
            "extra": opt._extra_state()}


def from_pgap_state(opt, state: Dict[str, Any]) -> Dict[str, Any]:
    """Load-state-dict pre-hook: check ``state`` (ValueError for another optimizer class, other
    parameters or tensors that do not fit; a warning when hyperparameters differ), load its
    tensors (the optimizer's own merge pending updates it holds before replacing its bases),
    then the saved pending updates, extra state and counters into ``opt``, and return torch's
    form of it, whose param groups torch then loads."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"state is not a {STATE_FORMAT} state dict")
    if state["optimizer"] != type(opt).__name__:
        raise ValueError(f"state was saved by {state['optimizer']}, not {type(opt).__name__}")
    names = [t.name for t in opt.trainables]
    if list(state["parameters"]) != names:
        missing = sorted(set(state["parameters"]) ^ set(names))[:5]
        raise ValueError(f"state was saved for other parameters (differences: {missing})")
    mine = opt.hyperparameters()
    changed = {k: (v, mine.get(k)) for k, v in state["hyperparameters"].items() if mine.get(k) != v}
    if changed:
        warnings.warn(f"loading a state saved with other hyperparameters (saved, now): {changed}",
                      stacklevel=5)
    tensors = dict(state["tensors"])
    shapes = {k: v for m in opt.mechanisms for k, v in m.pending_shapes().items()}
    pending = checked_state_tensors({k: tensors.pop(k) for k in list(tensors) if k in shapes},
                                    shapes, opt.device)
    opt._load_state_tensors(tensors)
    for mechanism in opt.mechanisms:
        mechanism.load_pending_state(pending)
    opt._load_extra_state(dict(state["extra"]))
    groups = [dict(g, **saved) for g, saved in zip(_unpacked_groups(opt), state["param_groups"])]
    opt.steps_done = int(state["step"])
    opt.forwards = int(state["forwards"])
    return {"state": {}, "param_groups": groups}


def _pending_state(opt) -> Dict[str, torch.Tensor]:
    """The pending updates of every mechanism ``opt`` attached (empty once merged)."""
    return {k: v for m in opt.mechanisms for k, v in m.pending_state().items()}


def _unpacked_groups(opt) -> Iterable[Dict[str, Any]]:
    """The current param groups as torch packs them (parameters as indices)."""
    start = 0
    for g in opt.param_groups:
        yield {k: (list(range(start, start + len(v))) if k == "params" else v) for k, v in g.items()}
        start += len(g["params"])


def field_tensors(items: Iterable[Tuple[str, Any]], fields: Sequence[str]) -> Dict[str, torch.Tensor]:
    """``{f"{prefix}.{field}": item.<field>}`` over (prefix, item) pairs, None fields left
    out: the tensors of per-matrix state objects, for ``_state_tensors``."""
    return {f"{prefix}.{f}": getattr(item, f) for prefix, item in items for f in fields
            if getattr(item, f) is not None}


def checked_state_tensors(tensors: Dict[str, torch.Tensor], shapes: Dict[str, Tuple[int, ...]],
                          device: torch.device) -> Dict[str, torch.Tensor]:
    """``tensors`` as contiguous float32 on ``device``, after checking that every key is one of
    ``shapes`` and has that shape (ValueError otherwise)."""
    unknown = sorted(set(tensors) - set(shapes))
    if unknown:
        raise ValueError(f"unexpected tensors in state: {unknown[:5]}")
    for key, value in tensors.items():
        if tuple(value.shape) != shapes[key]:
            raise ValueError(f"state tensor {key!r} has shape {tuple(value.shape)}; "
                             f"expected {shapes[key]}")
    return {k: v.to(device=device, dtype=torch.float32).contiguous() for k, v in tensors.items()}
