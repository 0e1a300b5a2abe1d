"""MeZO's own training step with pgap_kernels.perturb_ swapped in.

The structure is the original MeZO trainer's (princeton-nlp/MeZO, large_models/trainer.py):
``zo_perturb_parameters``, ``zo_forward``, ``zo_step`` and ``zo_update``, with the same names and
the same order of work. Each place that differs says what MeZO does ("MeZO:") and why it changed.
It runs on a tiny config-built Llama and a fixed batch (examples/tiny_model.py) and prints the
loss before and after::

    python examples/mezo_trainer_swap.py

What the swap buys: MeZO regenerates z with ``torch.normal`` per parameter and writes
``param.data = param.data + scale * z * eps`` (new tensors, four passes per step); here each pass
is one fused in-place ``perturb_`` over all parameters and the restore is folded into the update
(three passes per step). With these keys and seeds the loop is ``pgap.MeZO`` bit for bit
(tests/kernels/test_keys.py).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

import pgap
import pgap_kernels as pk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/, for tiny_model
from tiny_model import batch_loss, fixed_batch, tiny_llama  # noqa: E402


class SwappedMeZO:
    """The four ZO methods of MeZO's ``OurTrainer``, on fused perturbation passes."""

    def __init__(self, model: nn.Module, *, lr: float, eps: float, weight_decay: float = 0.0) -> None:
        self.model, self.lr, self.zo_eps, self.weight_decay = model, lr, eps, weight_decay
        self.named_parameters_to_optim: List[Tuple[str, torch.Tensor]] = []
        self.keys: List[int] = []
        self.zo_random_seed = 0
        self.projected_grad = 0.0

    def zo_perturb_parameters(self, scaling_factor: float = 1) -> None:
        # MeZO: torch.manual_seed(seed); for each parameter z = torch.normal(...) and
        #       param.data = param.data + scaling_factor * z * eps.
        # Here: one fused in-place pass over every parameter. z is a function of (seed, key,
        # element), so nothing is re-seeded. keys= names each tensor by its parameter name:
        # the update below splits the parameters into two calls, and keys by list position
        # would then give a tensor another tensor's z.
        params = [p for _, p in self.named_parameters_to_optim]
        pk.perturb_(params, self.zo_random_seed, scaling_factor * self.zo_eps, keys=self.keys)

    def zo_forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        # As MeZO (model.eval() and no autograd); torch.no_grad instead of inference_mode only
        # because this example has no Trainer around it.
        self.model.eval()
        with torch.no_grad():
            return self.model(**inputs).loss.detach()

    def zo_step(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        self.named_parameters_to_optim = [(n, p) for n, p in self.model.named_parameters()
                                          if p.requires_grad]
        # New: the stream key of each parameter, from its name (pgap.MeZO's keys).
        self.keys = pk.name_keys(n for n, _ in self.named_parameters_to_optim)
        # As MeZO: a numpy seed per step (perturb_ takes numpy integers as they are).
        self.zo_random_seed = np.random.randint(1000000000)

        self.zo_perturb_parameters(scaling_factor=1)
        loss1 = self.zo_forward(inputs)
        self.zo_perturb_parameters(scaling_factor=-2)
        loss2 = self.zo_forward(inputs)
        self.projected_grad = ((loss1 - loss2) / (2 * self.zo_eps)).item()
        # MeZO: self.zo_perturb_parameters(scaling_factor=1) here, to restore θ.
        # Here: no restore pass; the weights stay at θ − εz and zo_update restores them in the
        # same pass that applies the update.
        return loss1

    def zo_update(self) -> None:
        # MeZO: torch.manual_seed(seed) again, regenerate every z, and per parameter
        #   param.data -= lr * (projected_grad * z + weight_decay * param.data)   (decayed)
        #   param.data -= lr * projected_grad * z          (names with bias / layer_norm / layernorm)
        # Here: from θ − εz, decay·(θ − εz) + (decay·ε − lr·g)·z = decay·θ − lr·g·z, one call per
        # weight-decay group. pgap.mezo_decay_rule is MeZO's name test exactly.
        g, eps = self.projected_grad, self.zo_eps
        groups: Dict[bool, List[int]] = {True: [], False: []}
        for i, (name, p) in enumerate(self.named_parameters_to_optim):
            groups[pgap.mezo_decay_rule(name, p)].append(i)
        for decays, members in groups.items():
            decay = 1 - self.lr * self.weight_decay if decays else 1.0
            pk.perturb_([self.named_parameters_to_optim[i][1] for i in members],
                        self.zo_random_seed, decay * eps - self.lr * g,
                        keys=[self.keys[i] for i in members], decay=decay)
        # (MeZO then steps its lr scheduler; this example keeps the lr constant.)


def main(steps: int = 800, lr: float = 3e-3, eps: float = 1e-3, weight_decay: float = 0.0,
         seed: int = 0) -> Tuple[float, float]:
    """Train the tiny Llama on its fixed batch for ``steps`` ZO steps; (loss before, loss after)."""
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    np.random.seed(seed)
    model, batch = tiny_llama(), fixed_batch()
    trainer = SwappedMeZO(model, lr=lr, eps=eps, weight_decay=weight_decay)
    before = batch_loss(model, batch)
    for _ in range(steps):
        trainer.zo_step(batch)
        trainer.zo_update()
    return before, batch_loss(model, batch)


if __name__ == "__main__":
    first, last = main()
    print(f"loss on the fixed batch: {first:.4f} -> {last:.4f}")
