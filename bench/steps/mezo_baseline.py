"""The baseline of bench/steps/zo_step.py: a re-implementation of MeZO's own code.

This re-implements, as the benchmark's baseline, the MeZO step of the authors' repository
(princeton-nlp/MeZO, ``large_models/trainer.py``: ``zo_perturb_parameters``, ``zo_forward``,
``zo_step`` and ``zo_update``), keeping its per-parameter eager loop exactly:

* ``zo_perturb_parameters(scale)``: ``torch.manual_seed(step_seed)``, then for every trainable
  parameter ``z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device,
  dtype=param.data.dtype)`` and ``param.data = param.data + scale * z * eps`` (new tensors, not
  in place);
* ``zo_step``: perturb(+1), loss1, perturb(-2), loss2, ``projected_grad = ((loss1 - loss2) /
  (2 * eps)).item()``, perturb(+1) to restore;
* ``zo_update``: ``torch.manual_seed(step_seed)`` again, regenerate every z the same way and
  ``param.data = param.data - lr * (projected_grad * z + weight_decay * param.data)``, or
  ``param.data = param.data - lr * projected_grad * z`` for parameters whose name contains
  "bias", "layer_norm" or "layernorm" (MeZO's own test; note it does not catch Llama's
  ``model.norm.weight``, which only matters when weight_decay > 0).

Differences that do not change the work per step: the step seed comes from a seeded
``random.Random`` instead of ``np.random.randint(1000000000)`` (reproducible runs), the forward
is the caller's closure run under ``torch.no_grad()`` (MeZO's ``zo_forward`` uses
``torch.inference_mode()``; every method of the benchmark shares the same closure), and there is
no lr scheduler. It exposes the bits of the ``pgap`` optimizer API the benchmark uses:
``step(closure)``, ``forwards`` and ``steps_done``.
"""
from __future__ import annotations

import random
from typing import Callable, List, Tuple, Union

import torch
from torch import nn

from pgap.params import MEZO_NO_DECAY

NO_DECAY_MARKERS = MEZO_NO_DECAY  # MeZO's own test, kept once in pgap.params


class MeZOBaseline:
    """MeZO's two-point ZO-SGD step as its authors wrote it (eager, per parameter)."""

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        self.model = model
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self._rng = random.Random(seed)
        self.zo_random_seed = 0
        self.projected_grad = 0.0
        self.named_parameters_to_optim: List[Tuple[str, nn.Parameter]] = []
        self.steps_done = 0
        self.forwards = 0

    def zo_perturb_parameters(self, scaling_factor: float = 1.0) -> None:
        torch.manual_seed(self.zo_random_seed)
        for _name, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device,
                             dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * self.eps

    def zo_forward(self, closure: Callable[[], Union[torch.Tensor, float]]) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            loss = closure()
        self.forwards += 1
        loss = loss if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        return loss.detach()

    def zo_step(self, closure: Callable[[], Union[torch.Tensor, float]]) -> torch.Tensor:
        self.named_parameters_to_optim = [(name, param) for name, param in self.model.named_parameters()
                                          if param.requires_grad]
        self.zo_random_seed = self._rng.randint(0, 1000000000 - 1)
        self.zo_perturb_parameters(scaling_factor=1)
        loss1 = self.zo_forward(closure)
        self.zo_perturb_parameters(scaling_factor=-2)
        loss2 = self.zo_forward(closure)
        self.projected_grad = ((loss1 - loss2) / (2 * self.eps)).item()
        self.zo_perturb_parameters(scaling_factor=1)
        return loss1

    def zo_update(self) -> None:
        torch.manual_seed(self.zo_random_seed)
        for name, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device,
                             dtype=param.data.dtype)
            if not any(marker in name for marker in NO_DECAY_MARKERS):
                param.data = param.data - self.lr * (self.projected_grad * z + self.weight_decay * param.data)
            else:
                param.data = param.data - self.lr * (self.projected_grad * z)

    def step(self, closure: Callable[[], Union[torch.Tensor, float]]) -> float:
        """One MeZO step (``zo_step`` then ``zo_update``); returns loss1 as a float."""
        with torch.no_grad():
            loss1 = self.zo_step(closure)
            self.zo_update()
        self.steps_done += 1
        return float(loss1.float().item())
