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

import contextlib
import math
import types
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ._deps import require

require("by pgap.hf (ZOTrainer)", ("transformers", "accelerate"), "hf")

from transformers import Trainer  # noqa: E402

from .base import ZOOptimizer  # noqa: E402
from .methods import METHODS, build_optimizer, check_method, option_names  # noqa: E402
from .paired import PAIRED_METHODS  # noqa: E402

# Optimizer arguments that ZOTrainer sets from elsewhere, and where the user sets them.
SET_ELSEWHERE = {"lr": "TrainingArguments(learning_rate=...)", "eps": "ZOTrainer(zo_eps=...)",
                 "seed": "TrainingArguments(seed=...)", "backend": "ZOTrainer(zo_backend=...)",
                 "weight_decay": "TrainingArguments(weight_decay=...)",
                 "model": "ZOTrainer(model=...)"}


def check_zo_options(method: str, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``options`` as a new dict after checking them against ``method``'s optimizer.

    Raises
    ------
    ValueError
        If ``method`` is unknown, an option is set elsewhere in ZOTrainer (``SET_ELSEWHERE``
        names where), or an option is not one of the optimizer's (the message lists them).
    TypeError
        If ``options`` is not a dict with string keys.
    """
    cls = check_method(method)
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"zo_options must be a dict of option names to values, got "
                        f"{type(options).__name__}")
    for name in options:
        if name in SET_ELSEWHERE:
            raise ValueError(f"zo_options must not contain {name!r}: set it with {SET_ELSEWHERE[name]}")
    valid = [name for name in option_names(method) if name not in SET_ELSEWHERE]
    unknown = [name for name in options if name not in valid]
    if unknown:
        raise ValueError(f"zo_options has {', '.join(map(repr, unknown))}, which "
                         f"zo_method={method!r} ({cls.__name__}) does not take; its options are "
                         f"{', '.join(valid)}")
    return dict(options)


def _driven_by_trainer(opt: ZOOptimizer) -> None:
    """Let the Trainer's own ``optimizer.step()`` (no closure) do nothing: ZOTrainer's training
    step has already run ``opt.step(closure)``. Mutates ``opt.step`` on this instance only, as a
    bound method (lr schedulers wrap ``opt.step.__func__``)."""
    def step(self: ZOOptimizer, closure: Any = None, **kwargs: Any) -> Optional[float]:
        return None if closure is None else type(self).step(self, closure, **kwargs)
    opt.step = types.MethodType(step, opt)


class _Unwrapped(nn.Module):
    """Hands Trainer a "wrapped" model that is the model itself, so that accelerate does not wrap
    it in DistributedDataParallel (which would broadcast buffers every forward for nothing)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class ZOTrainer(Trainer):
    """``Trainer`` running ``zo_method``: one of "mezo" (the default), "pgap", "mezo-gv",
    "mezo-greedy", "ldsd", "agzo". A batch's ``attention_mask``, when present, is handed to the
    optimizer (:meth:`ZOOptimizer.set_token_mask`: AGZO leaves padded tokens out of its bases).

    Parameters (beyond ``Trainer``'s)
    ----------
    zo_method : str, the method (default "mezo")
    zo_eps : float, the perturbation scale ε
    zo_options : dict of the optimizer's own options (e.g. ``{"rank": 8, "window": 100}`` for
        "pgap", ``{"decay_filter": pgap.mezo_decay_rule}``); checked at construction: an unknown
        name raises ValueError listing the method's options, and lr, eps, seed, backend and
        weight_decay are refused with where to set them instead.
    zo_backend : pgap_kernels backend ("native", "reference", "cuda", "triton") or None (the
        automatic choice per device)
    zo_paired_forward : bool, both points of each step in one forward over the batch stacked
        twice (:mod:`pgap.paired`; MeZO family, AGZO, P-GAP and SubZero in functional mode, which ZOTrainer then
        picks unless ``zo_options`` set a mode). Each half's loss is the model's own
        ``loss_function`` (transformers' causal-LM / classification losses) on that half's
        logits and the batch's ``labels``, i.e. what ``compute_loss`` computes unpaired; a model
        without ``loss_function``, or a batch without ``labels``, is refused (ValueError).

    lr, weight decay and seed come from ``TrainingArguments`` (``learning_rate``,
    ``weight_decay``, ``seed``); the lr scheduler is Trainer's. Gradient accumulation and
    gradient clipping do not apply (there are no gradients): ``max_grad_norm`` is set to 0 and
    ``gradient_accumulation_steps`` must be 1. ``training_step`` returns (L+ + L−)/2.

    ``optimizers=(opt, scheduler)`` takes a pgap optimizer built on ``model`` (its own lr,
    eps, weight decay and seed then hold; ``zo_*`` must be left out); any other optimizer is
    refused. ``trainer.zo_optimizer`` is the pgap optimizer (``diagnostics()`` lives there);
    ``trainer.optimizer`` is accelerate's wrapper around it.

    Logging: Trainer's ``grad_norm`` (always 0 here: nothing has a gradient) is not logged;
    each training log carries ``projected_grad``, the last step's g, and ``projected_grad_rms``,
    sqrt(mean g²) over the steps since the previous log (for MeZO's Gaussian z, E[g²] ≈
    ‖∇L‖², so it tracks the gradient norm).
    """

    def __init__(self, *args: Any, zo_method: str = "mezo", zo_eps: float = 1e-3,
                 zo_options: Optional[Dict[str, Any]] = None, zo_backend: Optional[str] = None,
                 zo_paired_forward: bool = False, **kwargs: Any) -> None:
        self.zo_options = check_zo_options(zo_method, zo_options)
        if not isinstance(zo_paired_forward, bool):
            raise TypeError(f"zo_paired_forward must be a bool, got {type(zo_paired_forward).__name__}")
        self.zo_paired_forward = zo_paired_forward
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError("ZOTrainer needs gradient_accumulation_steps=1 (a ZO step has no "
                             "gradients to accumulate)")
        self.args.max_grad_norm = 0.0
        self.zo_method, self.zo_eps = zo_method, zo_eps
        self.zo_backend = zo_backend
        self.zo_optimizer: Optional[ZOOptimizer] = None
        self._projected_grads: List[float] = []
        if self.optimizer is not None:
            self._adopt(self.optimizer, zo_options)

    def _adopt(self, opt: Any, zo_options: Optional[Dict[str, Any]]) -> None:
        """Use ``opt`` (from ``optimizers=``) as the ZO optimizer, after checking it."""
        if not isinstance(opt, ZOOptimizer):
            raise TypeError(f"optimizers[0] is a {type(opt).__module__}.{type(opt).__name__}; "
                            "ZOTrainer steps with a pgap ZO optimizer: leave optimizers out and "
                            f"choose zo_method= (one of {', '.join(METHODS)}), or pass one such as "
                            "optimizers=(pgap.MeZO(model, lr=1e-6), None)")
        if zo_options:
            raise ValueError("zo_options configure the optimizer ZOTrainer builds; with "
                             "optimizers=(opt, ...) give those options to opt itself")
        own = {id(p) for p in self.model.parameters()}
        if not all(id(t.param) in own for t in opt.trainables):
            raise ValueError("optimizers[0] tunes parameters that are not the trainer's model's; "
                             "build it on the model passed as ZOTrainer(model=...)")
        self._check_pairs(opt)
        _driven_by_trainer(opt)
        self.zo_optimizer = opt

    def _check_pairs(self, opt: ZOOptimizer) -> None:
        if self.zo_paired_forward and not getattr(opt, "supports_pairs", False):
            raise ValueError(f"zo_paired_forward=True needs {PAIRED_METHODS} in "
                             f"functional mode; got {type(opt).__name__} in mode "
                             f"{getattr(opt, 'mode', None)!r}")
        if self.zo_paired_forward and not callable(getattr(self.model, "loss_function", None)):
            raise ValueError("zo_paired_forward=True takes each half's loss from the model's "
                             f"loss_function, which {type(self.model).__name__} does not have")

    def create_optimizer(self, model: Optional[nn.Module] = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            options = dict(self.zo_options)
            if self.zo_method == "pgap" and "total_steps" not in options and self.args.max_steps > 0:
                options["total_steps"] = self.args.max_steps
            if self.args.weight_decay:
                options["weight_decay"] = self.args.weight_decay
            if self.zo_paired_forward and "mode" in option_names(self.zo_method):
                options.setdefault("mode", "functional")
            opt = build_optimizer(self.zo_method, model or self.model, lr=self.args.learning_rate,
                                  eps=self.zo_eps, seed=self.args.seed, backend=self.zo_backend,
                                  **options)
            self._check_pairs(opt)
            _driven_by_trainer(opt)
            self.optimizer = self.zo_optimizer = opt
        return self.optimizer

    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader: Any = None) -> nn.Module:
        if training and self.args.world_size > 1 and not isinstance(model, _Unwrapped):
            return _Unwrapped(model)
        return super()._wrap_model(model, training, dataloader)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, taken inside the ZO optimizer's ``unmerged()``: the weights
        without the pending side-path updates (P-GAP/AGZO functional mode), which the saved
        optimizer state carries, so saving leaves the trajectory alone and
        ``resume_from_checkpoint`` continues it bit for bit. ``save_model`` outside a
        checkpoint merges (the trained weights)."""
        opt = self.zo_optimizer
        with opt.unmerged() if opt is not None else contextlib.nullcontext():
            super()._save_checkpoint(model, trial)

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> None:
        """No gradient norm: nothing has a gradient (Trainer would log 0 after a pass over every
        parameter); :meth:`log` adds the projected gradient instead."""
        return None

    def log(self, logs: Dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Trainer's log, with ``projected_grad`` and ``projected_grad_rms`` in training logs
        (the ones with "loss") in place of ``grad_norm``."""
        if "loss" in logs and self._projected_grads:
            logs.pop("grad_norm", None)
            grads, self._projected_grads = self._projected_grads, []
            logs["projected_grad"] = grads[-1]
            logs["projected_grad_rms"] = math.sqrt(sum(g * g for g in grads) / len(grads))
        super().log(logs, *args, **kwargs)

    def training_step(self, model: nn.Module, inputs: Dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        inputs = self._prepare_inputs(inputs)
        if self.zo_optimizer is None:  # Trainer builds the optimizer before the first step
            raise RuntimeError("ZOTrainer.training_step ran before create_optimizer; call "
                               "trainer.train(), which builds the ZO optimizer first")
        self.zo_optimizer.set_token_mask(inputs.get("attention_mask"))
        closure = lambda: self.compute_loss(model, inputs)  # noqa: E731
        if self.zo_paired_forward:
            loss = self.zo_optimizer.step(closure, pair_closure=lambda: self._pair_losses(model, inputs))
        else:
            loss = self.zo_optimizer.step(closure)
        self._projected_grads.append(float(self.zo_optimizer.diagnostics()["projected_grad"]))
        return torch.tensor(loss, device=self.args.device)

    def _pair_losses(self, model: nn.Module, inputs: Dict[str, Any]) -> torch.Tensor:
        """The pair closure: one forward of ``inputs`` stacked twice along dim 0 (labels left out
        of it) and the model's ``loss_function`` on each half's logits with the labels: a tensor
        of 2 losses (:mod:`pgap.paired`)."""
        if "labels" not in inputs:
            raise ValueError("zo_paired_forward=True needs batches with 'labels' (each half's loss "
                             "is the model's loss_function on them)")
        labels = inputs["labels"]
        rows = labels.shape[0]
        doubled = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows
                   else v for k, v in inputs.items() if k != "labels"}
        logits = model(**doubled).logits
        unwrapped = self.model
        config = getattr(unwrapped, "config", None)
        vocab = getattr(config, "vocab_size", None)
        return torch.stack([unwrapped.loss_function(logits=half, labels=labels, vocab_size=vocab)
                            for half in (logits[:rows], logits[rows:])])
