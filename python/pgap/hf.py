"""Hugging Face ``transformers`` integration: ``ZOTrainer``, a ``Trainer`` whose training step is
a pgap zeroth-order step. Logging, evaluation, checkpointing (safetensors), lr schedules and
callbacks stay Trainer's. With a PEFT model only the adapter parameters (the ones with
``requires_grad=True``) are perturbed. Under ``torchrun`` the model is never wrapped in DDP
(there are no gradients to reduce): each rank runs its own batch and the optimizer averages the
losses over ranks (docs/distributed.md).

Needs transformers and accelerate (``Trainer`` runs on accelerate): importing this module without
them raises :class:`pgap._deps.MissingDependencyError`, an ImportError whose message names the
missing modules and ``pip install "pgap-kernels[hf]"``."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ._deps import require

require("by pgap.hf (ZOTrainer)", ("transformers", "accelerate"), "hf")

from transformers import Trainer  # noqa: E402

from .base import ZOOptimizer  # noqa: E402
from .methods import build_optimizer  # noqa: E402


class _Unwrapped(nn.Module):
    """Hands Trainer a "wrapped" model that is the model itself, so that accelerate does not wrap
    it in DistributedDataParallel (which would broadcast buffers every forward for nothing)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class ZOTrainer(Trainer):
    """``Trainer`` running ``zo_method`` ("mezo", "pgap", "mezo-gv", "mezo-greedy", "ldsd",
    "agzo"). A batch's ``attention_mask``, when present, is handed to the optimizer
    (:meth:`ZOOptimizer.set_token_mask`: AGZO leaves padded tokens out of its bases).

    Parameters (beyond ``Trainer``'s)
    ----------
    zo_method : str
    zo_eps : float, the perturbation scale ε
    zo_options : dict of the optimizer's own options (e.g. ``{"rank": 8, "window": 100}``)
    zo_backend : pgap_kernels backend or None

    lr, weight decay and seed come from ``TrainingArguments`` (``learning_rate``,
    ``weight_decay``, ``seed``); the lr scheduler is Trainer's. Gradient accumulation and
    gradient clipping do not apply (there are no gradients): ``max_grad_norm`` is set to 0 and
    ``gradient_accumulation_steps`` must be 1. ``training_step`` returns (L+ + L−)/2.
    """

    def __init__(self, *args: Any, zo_method: str = "mezo", zo_eps: float = 1e-3,
                 zo_options: Optional[Dict[str, Any]] = None, zo_backend: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError("ZOTrainer needs gradient_accumulation_steps=1 (a ZO step has no "
                             "gradients to accumulate)")
        self.args.max_grad_norm = 0.0
        self.zo_method, self.zo_eps = zo_method, zo_eps
        self.zo_options = dict(zo_options or {})
        self.zo_backend = zo_backend
        self.zo_optimizer: Optional[ZOOptimizer] = None

    def create_optimizer(self, model: Optional[nn.Module] = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            options = dict(self.zo_options)
            if self.zo_method == "pgap" and "total_steps" not in options and self.args.max_steps > 0:
                options["total_steps"] = self.args.max_steps
            if self.args.weight_decay:
                options.setdefault("weight_decay", self.args.weight_decay)
            opt = build_optimizer(self.zo_method, model or self.model, lr=self.args.learning_rate,
                                  eps=self.zo_eps, seed=self.args.seed, backend=self.zo_backend,
                                  **options)
            opt.external_loop = True
            self.optimizer = self.zo_optimizer = opt
        return self.optimizer

    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader: Any = None) -> nn.Module:
        if training and self.args.world_size > 1 and not isinstance(model, _Unwrapped):
            return _Unwrapped(model)
        return super()._wrap_model(model, training, dataloader)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.zo_optimizer is not None:
            self.zo_optimizer.merge()  # on every rank, before rank 0 saves (functional P-GAP)
        super()._save_checkpoint(model, trial)

    def training_step(self, model: nn.Module, inputs: Dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        inputs = self._prepare_inputs(inputs)
        assert self.zo_optimizer is not None
        self.zo_optimizer.set_token_mask(inputs.get("attention_mask"))
        loss = self.zo_optimizer.step(lambda: self.compute_loss(model, inputs))
        return torch.tensor(loss, device=self.args.device)
