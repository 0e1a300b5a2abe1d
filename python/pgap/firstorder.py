"""First-order baselines: backprop fine-tuning with torch's AdamW or SGD, behind the interface
the ZO training loop uses (``step(closure)``, ``forwards``, ``steps_done``, ``lr``,
``state_dict``), so that ``pgap-finetune --method backprop-adamw|backprop-sgd`` and
``bench/experiments/compare.py`` train them on the same batches with the same loop as the ZO methods.

Budget: a step is one forward and one backward, counted as :data:`FORWARDS_PER_STEP` = 3
forward-equivalents (the backward costs about two forwards), against 2 per step for two-point ZO.

Precision: with bf16/fp16 weights the optimizer keeps float32 master copies and updates them
(standard mixed precision; a bf16 weight would swallow updates below half its ulp), and the
forward and backward run in the weights' dtype; the master copies and the gradients count in the
memory this baseline needs. Like the ZO optimizers the forward runs with the model in eval mode
(dropout off). One process only: no torchrun, no FSDP2.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from .params import DecayFilter, collect_trainable

FORWARDS_PER_STEP = 3
STATE_FORMAT = "pgap.firstorder/1"
Closure = Callable[[], Any]


class Backprop:
    """Backprop fine-tuning of ``model``'s trainable parameters (``requires_grad=True``; tied
    ones once) with ``optimizer_class``. ``eps``, ``seed`` and ``backend`` are accepted for the
    ZO methods' common signature and unused (the trajectory is a function of the batches);
    ``weight_decay`` applies to the parameters ``decay_filter`` names (default
    :func:`pgap.pgap_decay_rule`), decoupled for AdamW, L2 for SGD as torch defines them."""

    optimizer_class: type = torch.optim.AdamW

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, seed: int = 0,
                 backend: Optional[str] = None, weight_decay: float = 0.0,
                 decay_filter: Optional[DecayFilter] = None) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError(f"{type(self).__name__} runs in one process (no torchrun, no --fsdp)")
        self.model = model
        self.trainables = collect_trainable(model, decay_filter)
        self.low_precision = any(t.param.dtype != torch.float32 for t in self.trainables)
        # what the optimizer updates: the parameters, or float32 masters of low-precision ones
        self.master: List[torch.Tensor] = [
            t.param.detach().float().clone() if self.low_precision else t.param for t in self.trainables]
        groups = [{"params": [m for m, t in zip(self.master, self.trainables) if t.decays == decays],
                   "weight_decay": weight_decay if decays else 0.0} for decays in (True, False)]
        self.inner = self.optimizer_class([g for g in groups if g["params"]], lr=lr)
        self.eps, self.seed = eps, seed
        self.steps_done = 0
        self.forwards = 0
        self._last: Dict[str, Any] = {}

    @property
    def lr(self) -> float:
        return float(self.inner.param_groups[0]["lr"])

    def step(self, closure: Closure) -> float:
        """One forward and backward of ``closure()`` (a loss tensor, or ``(loss, weight)``), then
        the optimizer's update; returns the loss. A non-finite loss is returned without an
        update (the training loop stops on it)."""
        was = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                out = closure()
                loss = out[0] if isinstance(out, tuple) else out
                for t in self.trainables:
                    t.param.grad = None
                loss.backward()
        finally:
            self.model.train(was)
        value = float(loss.detach().float())
        self.forwards += FORWARDS_PER_STEP
        self.steps_done += 1
        if math.isfinite(value):
            if self.low_precision:
                for m, t in zip(self.master, self.trainables):
                    m.grad = None if t.param.grad is None else t.param.grad.float()
            self.inner.step()
            if self.low_precision:
                with torch.no_grad():
                    for m, t in zip(self.master, self.trainables):
                        t.param.copy_(m)
        self._release_grads()
        self._last = {"loss": value}
        return value

    def _release_grads(self) -> None:
        for m, t in zip(self.master, self.trainables):
            t.param.grad = None
            m.grad = None

    # the rest of the ZO optimizers' interface the training loops call
    def set_token_mask(self, mask: Optional[torch.Tensor]) -> None:
        """No-op (the ZO optimizers that read activations use it)."""

    def merge(self) -> None:
        """No-op: the weights always hold the update."""

    def unmerged(self) -> contextlib.AbstractContextManager:
        """No-op context (nothing is pending), as :meth:`pgap.ZOOptimizer.unmerged`."""
        return contextlib.nullcontext()

    def close(self) -> None:
        self._release_grads()

    def diagnostics(self) -> Dict[str, Any]:
        return dict(self._last, step=self.steps_done, forwards=self.forwards, lr=self.lr)

    def state_bytes(self) -> int:
        """Bytes of the optimizer's own tensors (moments, momentum, float32 masters)."""
        tensors = self._state_tensors()
        return sum(v.numel() * v.element_size() for v in tensors.values())

    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        for m, t in zip(self.master, self.trainables):
            for key, value in self.inner.state.get(m, {}).items():
                if isinstance(value, torch.Tensor):
                    out[f"{t.name}.{key}"] = value
            if self.low_precision:
                out[f"{t.name}.master"] = m
        return out

    def state_dict(self) -> Dict[str, Any]:
        """Step, forwards, lr groups, the parameter names and the optimizer's tensors (as
        :func:`pgap.save_optimizer` writes them)."""
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.inner.param_groups]
        return {"format": STATE_FORMAT, "optimizer": type(self).__name__, "step": self.steps_done,
                "forwards": self.forwards, "param_groups": groups,
                "parameters": [t.name for t in self.trainables],
                "tensors": {k: v.detach().contiguous().clone() for k, v in self._state_tensors().items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or state.get("optimizer") != type(self).__name__:
            raise ValueError(f"state is not a {type(self).__name__} state ({STATE_FORMAT})")
        if list(state["parameters"]) != [t.name for t in self.trainables]:
            raise ValueError("state was saved for other parameters")
        tensors = dict(state["tensors"])
        for m, t in zip(self.master, self.trainables):
            if self.low_precision:
                with torch.no_grad():
                    m.copy_(tensors.pop(f"{t.name}.master"))
            prefix = t.name + "."
            mine = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
            if mine:
                self.inner.state[m] = {k: v.to(m.device) for k, v in mine.items()}
        if tensors:
            raise ValueError(f"unexpected tensors in state: {sorted(tensors)[:5]}")
        for group, saved in zip(self.inner.param_groups, state["param_groups"]):
            group.update(saved)
        self.steps_done = int(state["step"])
        self.forwards = int(state["forwards"])


class BackpropAdamW(Backprop):
    """Backprop with ``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-8)."""

    optimizer_class = torch.optim.AdamW


class BackpropSGD(Backprop):
    """Backprop with plain ``torch.optim.SGD`` (no momentum): MeZO's update rule with the true
    gradient in place of the two-point estimate."""

    optimizer_class = torch.optim.SGD


FIRST_ORDER = {"backprop-adamw": BackpropAdamW, "backprop-sgd": BackpropSGD}
