"""Diagnostics against backprop, for small models: how well a ZO optimizer's last direction (and
its subspace) lines up with the autograd gradient at the current weights."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict

import torch


class GradientAlignment:
    """Mixed into :class:`pgap.ZOOptimizer`; uses its ``trainables``, ``steps_done``,
    ``_forward_mode`` and the subclass's :meth:`last_direction`."""

    def last_direction(self) -> Dict[str, torch.Tensor]:
        """The direction P of the last step, materialized per parameter (float32). For small
        models only: it allocates the size of the model."""
        raise NotImplementedError

    def gradient_alignment(self, closure: Callable[[], Any]) -> Dict[str, Any]:
        """Cosine between the last step's direction P and the backprop gradient at the current
        weights (one forward+backward with autograd; ``.grad`` is left as it was).

        Returns ``{"cosine": total, "per_parameter": {name: cosine}}``; for a Gaussian direction
        in d dimensions expect |cosine| ~ 1/sqrt(d).
        """
        if any(t.sharded for t in self.trainables):
            raise ValueError("gradient_alignment needs unsharded parameters (it compares whole "
                             "directions with whole gradients)")
        if self.steps_done == 0:
            raise RuntimeError("gradient_alignment needs at least one step (it compares the last "
                               "step's direction with the gradient)")
        grads = self.backprop_gradient(closure)
        direction = self.last_direction()
        dot = pnorm = gnorm = 0.0
        per = {}
        for name, p in direction.items():
            g = grads[name].reshape(p.shape)
            d, a, b = float((p * g).sum()), float(p.norm()), float(g.norm())
            dot, pnorm, gnorm = dot + d, pnorm + a * a, gnorm + b * b
            per[name] = d / (a * b) if a > 0 and b > 0 else float("nan")
        total = dot / math.sqrt(pnorm * gnorm) if pnorm > 0 and gnorm > 0 else float("nan")
        return dict(self._alignment_extras(grads), cosine=total, per_parameter=per)

    def _alignment_extras(self, grads: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """More entries of :meth:`gradient_alignment` computed from the same gradient."""
        return {}

    def backprop_gradient(self, closure: Callable[[], Any]) -> Dict[str, torch.Tensor]:
        """∇L at the current weights by autograd (float32 copies); restores every ``.grad``."""
        saved = [t.param.grad for t in self.trainables]
        for t in self.trainables:
            t.param.grad = None
        try:
            with torch.enable_grad(), self._forward_mode():
                loss = closure()
                loss = loss[0] if isinstance(loss, tuple) else loss
                if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                    raise TypeError("gradient_alignment needs a closure returning a loss tensor "
                                    "that requires grad")
                loss.backward()
            return {t.name: (t.param.grad.float().clone() if t.param.grad is not None
                             else torch.zeros_like(t.param, dtype=torch.float32))
                    for t in self.trainables}
        finally:
            for t, g in zip(self.trainables, saved):
                t.param.grad = g
