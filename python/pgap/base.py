"""ZOOptimizer: the two-point step, closures, schedules, state and diagnostics shared by every
pgap optimizer. Subclasses say how to perturb (``_apply``) and how to update (``_update``)."""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import warnings
from typing import Any, Callable, ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import pgap_kernels

from ._checks import check_choice, check_int, check_real
from .side_paths import SidePath
from .distributed import (LossReducer, ProcessGroup, check_same_on_all_ranks, fsdp_modules,
                          reshard, resolve_group)
from .params import DecayFilter, Trainable, collect_trainable
from .views import PerturbedViews
from .seeds import PROBE_STREAM, STEP_STREAM, RoundingPasses, derive_seed

LossValue = Union[torch.Tensor, float]
Closure = Callable[[], Union[LossValue, Tuple[LossValue, float]]]
STATE_FORMAT = "pgap.optimizer/1"
ROUNDING_CHOICES = ("stochastic", "nearest")
MODE_CHOICES = ("auto", "inplace", "functional")
LOW_PRECISION = (torch.bfloat16, torch.float16)


def resolve_mode(mode: str, trainables: Sequence[Trainable], side_paths: bool = False,
                 weight_decay: float = 0.0, sharded_ok: bool = False) -> str:
    """"inplace" or "functional" for ``mode`` ("auto": functional when a trainable parameter is
    bf16/fp16, unless one is FSDP2-sharded and the optimizer is not ``sharded_ok``, or the
    optimizer has low-rank ``side_paths`` and weight decay; else in place)."""
    mode = check_choice(mode, "mode", MODE_CHOICES)
    if mode != "auto":
        return mode
    low = any(t.param.dtype in LOW_PRECISION for t in trainables)
    blocked = ((not sharded_ok and any(t.sharded for t in trainables)) or
               (side_paths and weight_decay > 0))
    return "functional" if low and not blocked else "inplace"


class NonFiniteLossError(FloatingPointError):
    """A closure returned NaN or inf; the weights were restored before this was raised."""


@contextlib.contextmanager
def held_interrupts(held: List[Callable[[], None]]) -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) inside the block (main thread only; elsewhere a no-op): a signal
    that arrives appends to ``held`` a callable that delivers it (the previous handler's
    action, normally ``KeyboardInterrupt``), for the caller to run when it is safe."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[Tuple[int, Any]] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    except ValueError:  # not in the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            held.append(lambda: _deliver(previous, received[0]))


def _deliver(handler: Any, args: Tuple[int, Any]) -> None:
    if callable(handler):
        handler(*args)
    elif handler == signal.SIG_DFL:
        raise KeyboardInterrupt


class ZOOptimizer(torch.optim.Optimizer):
    """Base class of the pgap zeroth-order optimizers (a ``torch.optim.Optimizer``, so
    ``torch.optim.lr_scheduler`` schedules work on ``param_groups[0]["lr"]``).

    ``step(closure)`` calls ``closure()`` under ``torch.no_grad()`` (and, with ``eval_mode``,
    with the model in eval mode, dropout off) in each perturbed state and returns (L+ + L-)/2.

    Steps are atomic: an exception raised before the update passes start (by the closure, at any
    forward of the step, probes included; by a kernel; by the loss all-reduce; a
    ``KeyboardInterrupt``) takes the weights back to θ (undoing the pending perturbation: exact
    up to one float rounding per element) and the optimizer's state to where it was before the
    step, then propagates. Ctrl-C during the update passes is delivered when they end, after the
    step has completed (docs/optimizers.md, "Interrupted steps").

    Distributed (docs/distributed.md): with ``process_group`` (default: the default group when
    torch.distributed is initialized) every forward's loss is the mean over ranks, weighted by
    the closure's optional weight (a closure may return ``(loss, local_batch_size)``; a bare loss
    weighs 1). FSDP2-sharded (DTensor) parameters are perturbed shard by shard with their global
    element offsets, so the perturbation equals the unsharded one.
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float, weight_decay: float, seed: int,
                 eval_mode: bool, backend: Optional[str], decay_filter: Optional[DecayFilter],
                 process_group: Optional[ProcessGroup] = None, rounding: str = "stochastic") -> None:
        lr = check_real(lr, "lr", low=0.0)
        self.rounding = check_choice(rounding, "rounding", ROUNDING_CHOICES)
        self.eps = check_real(eps, "eps", low=0.0, strict=True)
        self.weight_decay = check_real(weight_decay, "weight_decay", low=0.0)
        self.seed = check_int(seed, "seed", low=0, high=1 << 64)
        self.eval_mode = bool(eval_mode)
        self.model = model
        self.trainables: List[Trainable] = collect_trainable(model, decay_filter)
        self.device = self.trainables[0].local.device
        # any bf16/fp16 trainable (stochastic rounding applies; read every update pass)
        self.low_precision = any(t.param.dtype in LOW_PRECISION for t in self.trainables)
        group = resolve_group(process_group)
        self.reducer: Optional[LossReducer] = LossReducer(group) if group is not None else None
        self._ranks_checked = False
        self._fsdp = fsdp_modules(model) if any(t.sharded for t in self.trainables) else []
        self.backend = self._check_backend(backend)
        super().__init__([t.param for t in self.trainables], {"lr": lr})
        self.steps_done = 0
        self.forwards = 0
        self._held: List[Callable[[], None]] = []  # Ctrl-C held by committing(), delivered by step
        self._diag: Dict[str, Any] = {}
        # set by a training loop (pgap.hf.ZOTrainer) that runs step(closure) itself and then
        # calls step() without a closure, which must do nothing
        self.external_loop = False

    # -- configuration ---------------------------------------------------------------------
    def _check_backend(self, backend: Optional[str]) -> Optional[str]:
        if backend is None:
            return None
        status = pgap_kernels.backend_status(self.device)
        if backend not in status:
            raise ValueError(f"backend must be one of {sorted(status)} or None, got {backend!r}")
        if status[backend] is not None:
            raise ValueError(f"backend {backend!r} cannot run on {self.device}: {status[backend]}")
        return backend

    @property
    def lr(self) -> float:
        """The current learning rate (``param_groups[0]["lr"]``, moved by lr schedulers)."""
        return float(self.param_groups[0]["lr"])

    def hyperparameters(self) -> Dict[str, Any]:
        """The options that shape the trajectory (saved with the state, checked on load)."""
        return {"eps": self.eps, "weight_decay": self.weight_decay, "seed": self.seed,
                "eval_mode": self.eval_mode, "rounding": self.rounding}

    def forwards_per_step(self) -> float:
        """Average forward passes per step so far (2 for MeZO; more with probes)."""
        return self.forwards / self.steps_done if self.steps_done else float("nan")

    def step_seed(self, step: Optional[int] = None) -> int:
        """Seed of the direction of ``step`` (default: the next step)."""
        return derive_seed(self.seed, self.steps_done if step is None else step, STEP_STREAM)

    # -- the step --------------------------------------------------------------------------
    def step(self, closure: Optional[Closure] = None) -> float:  # type: ignore[override]
        """One ZO step. ``closure()`` runs a forward on the current batch and returns the loss
        (a scalar tensor or float). Returns (L+ + L-)/2. Mutates the trainable parameters."""
        if closure is None and self.external_loop:
            return None
        if closure is None or not callable(closure):
            raise TypeError(f"{type(self).__name__}.step needs a closure that runs a forward on "
                            "the current batch and returns the loss")
        if self.reducer is not None and not self._ranks_checked:
            check_same_on_all_ranks(self.reducer.group, self._rank_fingerprint())
            self._ranks_checked = True
        reshard(self._fsdp)  # a forward run outside the optimizer (an evaluation) may have unsharded
        saved = self._step_state()
        self._undo = None
        self._held = []
        try:
            with self._kernels():
                loss = self._step(closure)
        except BaseException:
            self._abort(saved)
            raise
        self.steps_done += 1
        for deliver in self._held:  # a Ctrl-C held during the update passes, now the step is done
            deliver()
        return loss

    # -- atomic steps ----------------------------------------------------------------------
    _undo: Optional[Callable[[], None]] = None  # what takes the weights back to θ now

    def pending(self, undo: Optional[Callable[[], None]]) -> None:
        """Record what takes the weights back to θ after the pass just done (None: they are at
        θ). Subclasses call it after every pass that perturbs the weights."""
        self._undo = undo

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """The update passes of a step: from here the step is not rolled back (no undo), and
        Ctrl-C waits until the block ends."""
        self._undo = None
        with held_interrupts(self._held):
            yield

    def _step_state(self) -> Dict[str, Any]:
        """What a failed step restores (besides the weights): counters and diagnostics here;
        subclasses add their own (references: their state is replaced, not mutated, before the
        update passes)."""
        return {"forwards": self.forwards, "diag": self._diag}

    def _restore_step_state(self, saved: Dict[str, Any]) -> None:
        self.forwards = saved["forwards"]
        self._diag = saved["diag"]
        if self._side is not None:
            self._side.coeff = 0.0
        if self.views is not None:
            self.views.restore_all()
            self.hide_views()

    def _abort(self, saved: Dict[str, Any]) -> None:
        """Undo the pending perturbation and restore the state of ``saved``."""
        undo, self._undo = self._undo, None
        try:
            if undo is not None:
                reshard(self._fsdp)  # an interrupted forward may have left modules unsharded
                with torch.no_grad(), self._kernels():
                    undo()
        finally:
            self._restore_step_state(saved)

    def _step(self, closure: Closure) -> float:
        raise NotImplementedError

    def _rank_fingerprint(self) -> Dict[str, Any]:
        """What every rank must agree on before the first step."""
        return {"optimizer": type(self).__name__, "seed": self.seed, "step": self.steps_done,
                "hyperparameters": self.hyperparameters(), "lr": self.lr,
                "parameters": [(t.name, list(t.shape)) for t in self.trainables]}

    @property
    def world_size(self) -> int:
        """Ranks sharing the losses (1 without a process group)."""
        return self.reducer.world_size if self.reducer is not None else 1

    def perturb(self, trainables: Sequence[Trainable], seeds: Sequence[int], coeffs: Sequence[float],
                *, decay: float = 1.0, means: Optional[List[torch.Tensor]] = None,
                mean_coeff: float = 0.0, into: Optional[List[torch.Tensor]] = None,
                rounding: Optional[Dict[str, Any]] = None) -> None:
        """θ ← decay·θ + mean_coeff·μ + Σ_j coeffs[j]·z(seeds[j]) over ``trainables`` (local
        shards, at their global offsets), one ``perturb_`` call. ``into``: tensors shaped like
        the local shards (μ, a momentum buffer, a direction) written instead of the parameters,
        with the parameters' keys and offsets. ``rounding``: from :meth:`update_rounding`."""
        if trainables:
            targets = [t.local for t in trainables] if into is None else into
            pgap_kernels.perturb_(targets, list(seeds), list(coeffs),
                                  keys=[t.key for t in trainables],
                                  offsets=[t.offset for t in trainables], decay=decay, mean=means,
                                  mean_coeff=mean_coeff if means is not None else 0.0,
                                  **(rounding or {}))

    rounding_passes: ClassVar[RoundingPasses] = RoundingPasses()  # subclasses name their passes

    def update_rounding(self, name: str) -> Dict[str, Any]:
        """Keyword arguments of the kernels for update pass ``name`` (one of
        :attr:`rounding_passes`) of this step: stochastic rounding into bf16/fp16 weights
        (``rounding="stochastic"``, the default) with that pass's own seed, or {} (nearest)."""
        if self.rounding != "stochastic" or not self.low_precision:
            return {}
        return {"rounding": "stochastic",
                "rounding_seed": self.rounding_passes.seed(self.seed, self.steps_done, name)}

    # -- perturbed views (functional modes): the weights never hold a perturbation ----------
    views: Optional[PerturbedViews] = None
    _shown: Dict[int, float]
    _views_reached: bool

    def attach_views(self, model: nn.Module, trainables: Sequence[Trainable], **kwargs: Any) -> None:
        """Show the perturbations of ``trainables`` to the forwards through
        :class:`PerturbedViews` instead of writing them (kwargs: ``means``)."""
        self.views = PerturbedViews(model, trainables, **kwargs)
        self._shown = {}
        self._views_reached = False  # set once the first perturbed forward was checked

    def move(self, trainables: Sequence[Trainable], seeds: Sequence[int], coeffs: Sequence[float]) -> None:
        """θ += Σ_j coeffs[j]·z(seeds[j]) over ``trainables``: in place, or (with views) added to
        what the next forwards see there, the weights untouched. Calls add up per seed; the
        ``trainables`` of the last call are the ones shown."""
        if self.views is None:
            self.perturb(trainables, seeds, coeffs)
            return
        for seed, coeff in zip(seeds, coeffs):
            total = self._shown.get(seed, 0.0) + coeff
            if total == 0.0:
                self._shown.pop(seed, None)
            else:
                self._shown[seed] = total
        self.views.show(list(self._shown), list(self._shown.values()), only=trainables)

    def hide_views(self) -> None:
        """The next forwards see the stored weights (no-op without views)."""
        if self.views is not None:
            self._shown = {}
            self.views.hide()

    @property
    def carried(self) -> float:
        """How much of −P the view-covered (or in-place) weights hold after the two-point pair
        for the stream-Gaussian part: ε in place, 0 with views."""
        return 0.0 if self.views is not None else self.eps

    def _kernels(self) -> contextlib.AbstractContextManager:
        return pgap_kernels.use_backend(self.backend) if self.backend else contextlib.nullcontext()

    @contextlib.contextmanager
    def _forward_mode(self) -> Iterator[None]:
        modes = [(m, m.training) for m in self.model.modules()] if self.eval_mode else []
        if self.eval_mode:
            self.model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def evaluate(self, closure: Closure) -> float:
        """``closure()`` under no_grad (and eval mode), as a float; counts one forward. With a
        process group, the mean over ranks weighted by the closure's weight (default 1)."""
        with torch.no_grad(), self._forward_mode():
            out = closure()
        reshard(self._fsdp)  # the shards are what the optimizer writes next
        self.forwards += 1
        loss, weight = out if isinstance(out, tuple) else (out, 1.0)
        value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
        if self.reducer is not None:
            value = self.reducer.mean(value, float(weight))
        return value

    def two_point(self, closure: Closure, apply: Callable[[float], None], eps: float,
                  capture: Optional[Callable[[], contextlib.AbstractContextManager]] = None
                  ) -> Tuple[float, float]:
        """L(θ + eps·P) and L(θ − eps·P), leaving the weights at θ − eps·P.

        ``apply(c)`` adds c·P in place; ``capture()``, if given, is a context around the first
        forward. On any exception (a non-finite loss: :class:`NonFiniteLossError`) the step
        takes the weights back to θ.
        """
        apply(eps)
        self.pending(lambda: apply(-eps))
        with capture() if capture is not None else contextlib.nullcontext():
            plus = self.evaluate_finite(closure, "at θ+ε·P")
        self._check_views_reached()
        apply(-2.0 * eps)
        self.pending(lambda: apply(eps))
        minus = self.evaluate_finite(closure, "at θ−ε·P")
        return plus, minus

    def _check_views_reached(self) -> None:
        """Once, after the first perturbed forward with views: raise ValueError (the step then
        restores the weights) naming the trainable parameters that the forward did not read
        through their module's forward. Functional mode would show them nothing, so they would
        never train, silently: a closure that reads ``layer.weight`` directly, or a parameter
        no forward uses."""
        if self.views is None or not self.views.shown or self._views_reached:
            return
        missed = self.views.unshown()
        if missed:
            listed = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
            raise ValueError(
                f"mode='functional': the forward never ran the module that owns {listed}, so "
                "they saw their stored weights, not the perturbation, and would not train. "
                "Perturbed views need each trainable parameter read inside the forward of a "
                "module that owns it (docs/optimizers.md). Use mode='inplace', or freeze the "
                "parameters the loss does not use (requires_grad_(False)).")
        self._views_reached = True
        self.views.stop_witnessing()

    def evaluate_finite(self, closure: Closure, where: str) -> float:
        """:meth:`evaluate`; raises :class:`NonFiniteLossError` saying ``where`` the loss was
        taken on a NaN or infinite loss (the step then restores the weights)."""
        loss = self.evaluate(closure)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"step {self.steps_done}: the loss {where} is {loss}; "
                                     "weights restored")
        return loss

    def probe_seeds(self, count: int) -> List[int]:
        """Seeds of this step's probes: ``derive_seed(seed, step, 1 + i)``, i < count."""
        return [derive_seed(self.seed, self.steps_done, PROBE_STREAM + i) for i in range(count)]

    def restore_update(self, projected_grad: float, decays: bool, lr_scale: float = 1.0,
                       carried: Optional[float] = None) -> Tuple[float, float]:
        """(decay, coeff) of the pass that takes θ − carried·P (default carried = ε: the weights
        after the two-point pair in place; 0 when they never held it) to decay·θ − lr·g·P
        (lr = the current lr times ``lr_scale``): decay = 1 − lr·wd (1 where weight decay does
        not apply), coeff = decay·carried − lr·g."""
        lr = self.lr * lr_scale
        decay = 1.0 - lr * self.weight_decay if decays else 1.0
        carried = self.eps if carried is None else carried
        return decay, decay * carried - lr * projected_grad

    def set_token_mask(self, mask: Optional[torch.Tensor]) -> None:
        """The (batch, seq) attention mask of the next step's batch, for optimizers that read
        activations (:class:`pgap.AGZO` leaves padded tokens out of its bases); a no-op for the
        others. Training loops may call it before every step."""

    # -- functional modes (P-GAP, AGZO): updates kept outside the weights ------------------
    _side: Optional[SidePath] = None

    def _attach_side_path(self, model: nn.Module, states: Sequence[Any]) -> None:
        """Route the forwards of ``states`` (those with ``functional`` set) through a
        :class:`SidePath` and merge before ``model.state_dict()``. Raises ValueError for sharded
        matrices or weight decay on a functional matrix."""
        if any(s.trainable.sharded for s in states):
            raise ValueError("mode='functional' does not support sharded (FSDP2) matrices; use "
                             "mode='inplace'")
        if self.weight_decay > 0 and any(s.functional and s.trainable.decays for s in states):
            raise ValueError("mode='functional' does not support weight_decay > 0 on the matrices "
                             "it keeps functional; use mode='inplace' or weight_decay=0")
        self._side = SidePath(states)
        self._model_hook = model.register_state_dict_pre_hook(lambda *args, **kw: self.merge())

    def _detach_side_path(self) -> None:
        """Merge and remove the side path's hooks (the model then runs without them)."""
        if self._side is not None:
            self.merge()
            self._side.remove()
            self._model_hook.remove()
            self._side = None

    def close(self) -> None:
        """Merge pending updates and remove this optimizer's hooks from the model (side paths,
        views; subclasses add theirs). The model then runs without them; do not step after."""
        self._detach_side_path()
        if self.views is not None:
            self.views.remove()
            self.views = None

    def merge(self) -> None:
        """Write pending updates kept outside the weights into them (the functional modes of
        P-GAP and AGZO); a no-op otherwise. Call it on every rank before saving on one."""
        if self._side is not None:
            with self._kernels():
                self._side.merge(self.update_rounding("merge"))

    # -- diagnostics -----------------------------------------------------------------------
    def diagnostics(self) -> Dict[str, Any]:
        """Scalars of the last step: losses, projected gradient, lr, forwards (a new dict)."""
        return dict(self._diag, step=self.steps_done, forwards=self.forwards, lr=self.lr)

    def last_direction(self) -> Dict[str, torch.Tensor]:
        """The direction P of the last step, materialized per parameter (float32). For small
        models only: it allocates the size of the model."""
        raise NotImplementedError

    def gradient_alignment(self, closure: Closure) -> Dict[str, Any]:
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

    def backprop_gradient(self, closure: Closure) -> Dict[str, torch.Tensor]:
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

    # -- state -----------------------------------------------------------------------------
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        return {}

    @staticmethod
    def field_tensors(items: Iterable[Tuple[str, Any]], fields: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``{f"{prefix}.{field}": item.<field>}`` over (prefix, item) pairs, None fields left
        out: the tensors of per-matrix state objects, for :meth:`_state_tensors`."""
        return {f"{prefix}.{f}": getattr(item, f) for prefix, item in items for f in fields
                if getattr(item, f) is not None}

    def checked_state_tensors(self, tensors: Dict[str, torch.Tensor],
                              shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, torch.Tensor]:
        """``tensors`` as contiguous float32 on this optimizer's device, after checking that
        every key is one of ``shapes`` and has that shape (ValueError otherwise)."""
        unknown = sorted(set(tensors) - set(shapes))
        if unknown:
            raise ValueError(f"unexpected tensors in state: {unknown[:5]}")
        for key, value in tensors.items():
            if tuple(value.shape) != shapes[key]:
                raise ValueError(f"state tensor {key!r} has shape {tuple(value.shape)}; "
                                 f"expected {shapes[key]}")
        return {k: v.to(device=self.device, dtype=torch.float32).contiguous() for k, v in tensors.items()}

    def _load_state_tensors(self, tensors: Dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"unexpected tensors in state: {sorted(tensors)[:5]}")

    def _extra_state(self) -> Dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: Dict[str, Any]) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:  # type: ignore[override]
        """Everything needed to resume exactly: step, forwards, lr group, hyperparameters, the
        parameter names and the optimizer's tensors (contiguous, unshared: safetensors-ready;
        see :func:`pgap.save_optimizer`). Seeds are derived from (seed, step), never stored.
        Pending functional-mode updates are merged first, so the live run and a resumed one
        continue from the same weights."""
        self.merge()
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"format": STATE_FORMAT, "optimizer": type(self).__name__,
                "step": self.steps_done, "forwards": self.forwards, "param_groups": groups,
                "hyperparameters": self.hyperparameters(),
                "parameters": [t.name for t in self.trainables],
                "tensors": {k: v.detach().contiguous().clone() for k, v in self._state_tensors().items()},
                "extra": self._extra_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:  # type: ignore[override]
        """Restore from :meth:`state_dict`. Raises ValueError if the state belongs to another
        optimizer class or other parameters; warns if hyperparameters differ."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state is not a {STATE_FORMAT} state dict")
        if state["optimizer"] != type(self).__name__:
            raise ValueError(f"state was saved by {state['optimizer']}, not {type(self).__name__}")
        names = [t.name for t in self.trainables]
        if list(state["parameters"]) != names:
            missing = sorted(set(state["parameters"]) ^ set(names))[:5]
            raise ValueError(f"state was saved for other parameters (differences: {missing})")
        mine = self.hyperparameters()
        changed = {k: (v, mine.get(k)) for k, v in state["hyperparameters"].items() if mine.get(k) != v}
        if changed:
            warnings.warn(f"loading a state saved with other hyperparameters (saved, now): {changed}",
                          stacklevel=2)
        self._load_state_tensors(dict(state["tensors"]))
        self._load_extra_state(dict(state["extra"]))
        for group, saved in zip(self.param_groups, state["param_groups"]):
            group.update(saved)
        self.steps_done = int(state["step"])
        self.forwards = int(state["forwards"])
