"""ZOOptimizer: the step protocol every pgap optimizer shares (closures, atomic steps with Ctrl-C
held during the update passes, the two-point pair, state through torch's hooks). Subclasses say
how to perturb and update (``_step``); what they attach to the model (views, side paths,
sketches) the base drives through :class:`pgap.mechanism.Mechanism` only."""
from __future__ import annotations

import contextlib
import math
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar, Union

import torch
from torch import nn

import pgap_kernels

from . import autocast as autocast_regions
from . import state as state_hooks
from ._checks import check_backend, check_choice, check_int, check_real
from .alignment import GradientAlignment
from .distributed import LossReducer, ProcessGroup, check_same_on_all_ranks, fsdp_modules, reshard, resolve_group
from .mechanism import Mechanism
from .paired import PairClosure, pair_losses
from .passes import SeededPasses
from .params import LOW_PRECISION, DecayFilter, Trainable, collect_trainable

LossValue = Union[torch.Tensor, float]
Closure = Callable[[], Union[LossValue, Tuple[LossValue, float]]]
ROUNDING_CHOICES = ("stochastic", "nearest")
M = TypeVar("M", bound=Mechanism)


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


class ZOOptimizer(SeededPasses, GradientAlignment, torch.optim.Optimizer):
    """Base class of the pgap zeroth-order optimizers (a ``torch.optim.Optimizer``, so
    ``torch.optim.lr_scheduler`` schedules work on ``param_groups[0]["lr"]`` and the state-dict
    hooks of torch run; the state format is :mod:`pgap.state`'s).

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
        # the device types whose autocast regions a step looks for (pgap.autocast)
        self._device_types = sorted({t.param.device.type for t in self.trainables})
        self.device = self.trainables[0].local.device
        # any bf16/fp16 trainable (stochastic rounding applies; read every update pass)
        self.low_precision = any(t.param.dtype in LOW_PRECISION for t in self.trainables)
        group = resolve_group(process_group)
        self.reducer: Optional[LossReducer] = LossReducer(group) if group is not None else None
        self._ranks_checked = False
        self._fsdp = fsdp_modules(model) if any(t.sharded for t in self.trainables) else []
        self.backend = check_backend(backend, self.device)
        super().__init__([t.param for t in self.trainables], {"lr": lr})
        self.register_state_dict_pre_hook(state_hooks.before_state_dict)
        self.register_state_dict_post_hook(state_hooks.to_pgap_state)
        self.register_load_state_dict_pre_hook(state_hooks.from_pgap_state)
        self.steps_done = 0
        self.forwards = 0
        self.mechanisms: List[Mechanism] = []  # what this optimizer attached to the model
        self._undo: Optional[Callable[[], None]] = None  # what takes the weights back to θ now
        self._held: List[Callable[[], None]] = []  # Ctrl-C held by committing(), delivered by step
        self._diag: Dict[str, Any] = {}
        self.keeps_pending = False  # inside unmerged(): state_dict() merges nothing
        self._pair: Optional[PairClosure] = None  # the pair closure of the step running now

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

    # -- the step protocol -----------------------------------------------------------------
    supports_pairs = False  # whether step() takes a pair_closure (functional MeZO family and low-rank methods)

    def step(self, closure: Optional[Closure] = None,  # type: ignore[override]
             pair_closure: Optional[PairClosure] = None) -> float:
        """One ZO step. ``closure()`` runs a forward on the current batch and returns the loss
        (a scalar tensor or float). Returns (L+ + L-)/2. Mutates the trainable parameters.

        ``pair_closure`` (where :attr:`supports_pairs`): runs one forward on the current batch
        stacked twice along dim 0 and returns the two halves' losses (a tensor of 2, or a pair);
        the two-point pair is then that one forward, its first half at θ + ε·P and its second
        at θ − ε·P (:mod:`pgap.paired`; counted as 2 forwards). ``closure`` still serves any
        other forward of the step (probes).

        Inside a ``torch.autocast`` region the forwards run in the region's dtype, each in its
        own region without the cast cache (the cache would hand the second forward the first
        one's weights), and the rest of the step with autocast off (:mod:`pgap.autocast`)."""
        if closure is None or not callable(closure):
            raise TypeError(f"{type(self).__name__}.step needs a closure that runs a forward on "
                            "the current batch and returns the loss")
        if pair_closure is not None:
            if not callable(pair_closure):
                raise TypeError(f"pair_closure must be callable, got {type(pair_closure).__name__}")
            if not self.supports_pairs:
                raise ValueError(f"{type(self).__name__} (mode={getattr(self, 'mode', None)!r}) does "
                                 "not take a pair_closure: paired forwards need mode='functional' "
                                 "with MeZO, MeZO-GV/Greedy, LDSD, or AGZO, P-GAP or SubZero with "
                                 "every low-rank matrix on a side path (docs/optimizers.md, 'Paired forwards')")
        if self.reducer is not None and not self._ranks_checked:
            check_same_on_all_ranks(self.reducer.group, self._rank_fingerprint())
            self._ranks_checked = True
        reshard(self._fsdp)  # a forward run outside the optimizer (an evaluation) may have unsharded
        saved = self._step_state()
        self._undo = None
        self._held = []
        # inside a user's autocast region: each forward gets its own region, the rest none
        regions = autocast_regions.open_regions(self._device_types)
        closure = autocast_regions.per_forward(closure, regions)
        self._pair = autocast_regions.per_forward(pair_closure, regions)
        try:
            with self._kernels(), autocast_regions.outside(regions):
                loss = self._step(closure)
        except BaseException:
            self._abort(saved)
            raise
        finally:
            self._pair = None
        self.steps_done += 1
        for deliver in self._held:  # a Ctrl-C held during the update passes, now the step is done
            deliver()
        return loss

    def _step(self, closure: Closure) -> float:
        raise NotImplementedError

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
        """Restore ``saved`` (from :meth:`_step_state`) and let every mechanism drop what the
        failed step left."""
        self.forwards = saved["forwards"]
        self._diag = saved["diag"]
        for mechanism in self.mechanisms:
            mechanism.abort()

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

    def evaluate(self, closure: Closure) -> float:
        """``closure()`` under no_grad (and eval mode), as a float; counts one forward. With a
        process group, the mean over ranks weighted by the closure's weight (default 1)."""
        with torch.no_grad(), self._forward_mode():
            out = closure()
        reshard(self._fsdp)  # the shards are what the optimizer writes next
        self.forwards += 1
        loss, weight = out if isinstance(out, tuple) else (out, 1.0)
        return self._loss_value(loss, weight)

    def _loss_value(self, loss: LossValue, weight: float) -> float:
        """A closure's loss as a float (with a process group: the weighted mean over ranks)."""
        value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
        if self.reducer is not None:
            value = self.reducer.mean(value, float(weight))
        return value

    def evaluate_pair(self, pair_closure: PairClosure,
                      capture: Optional[contextlib.AbstractContextManager] = None) -> Tuple[float, float]:
        """(L+, L−) from one forward of ``pair_closure`` over the doubled batch (under no_grad
        and eval mode, as :meth:`evaluate`, inside ``capture`` when given; counts two forwards),
        after which every mechanism checks what it showed (as :meth:`two_point` does after its
        first forward); NonFiniteLossError when either loss is NaN or infinite."""
        with capture or contextlib.nullcontext():  # a failure below also ends the capture as failed
            with torch.no_grad(), self._forward_mode():
                out = pair_closure()
            self.forwards += 2
            losses, weight = pair_losses(out)
            values = (self._loss_value(losses[0], weight), self._loss_value(losses[1], weight))
            for value, where in zip(values, ("at θ+ε·P", "at θ−ε·P")):
                if not math.isfinite(value):
                    raise NonFiniteLossError(f"step {self.steps_done}: the loss {where} (paired "
                                             f"forward) is {value}; weights restored")
        for mechanism in self.mechanisms:
            mechanism.forward_checked()
        return values

    def evaluate_finite(self, closure: Closure, where: str) -> float:
        """:meth:`evaluate`; raises :class:`NonFiniteLossError` saying ``where`` the loss was
        taken on a NaN or infinite loss (the step then restores the weights)."""
        loss = self.evaluate(closure)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"step {self.steps_done}: the loss {where} is {loss}; "
                                     "weights restored")
        return loss

    def two_point(self, closure: Closure, apply: Callable[[float], None], eps: float,
                  capture: Optional[Callable[[], contextlib.AbstractContextManager]] = None
                  ) -> Tuple[float, float]:
        """L(θ + eps·P) and L(θ − eps·P), leaving the weights at θ − eps·P.

        ``apply(c)`` adds c·P in place; ``capture()``, if given, is a context around the first
        forward, after which every mechanism checks what it showed. On any exception (a
        non-finite loss: :class:`NonFiniteLossError`) the step takes the weights back to θ.
        """
        apply(eps)
        self.pending(lambda: apply(-eps))
        with capture() if capture is not None else contextlib.nullcontext():
            plus = self.evaluate_finite(closure, "at θ+ε·P")
        for mechanism in self.mechanisms:
            mechanism.forward_checked()
        apply(-2.0 * eps)
        self.pending(lambda: apply(eps))
        minus = self.evaluate_finite(closure, "at θ−ε·P")
        return plus, minus

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

    # -- mechanisms ------------------------------------------------------------------------
    def attach(self, mechanism: M) -> M:
        """Register ``mechanism`` (hooks this optimizer put on the model); returns it."""
        self.mechanisms.append(mechanism)
        return mechanism

    def merge(self) -> None:
        """Write pending updates kept outside the weights into them (the functional modes of
        P-GAP and AGZO); a no-op otherwise. Mutates the weights (rounded as the "merge" pass
        says at this step), so a merge the run would not have made changes its trajectory: for
        checkpoints use :meth:`unmerged`. Before exporting on one rank, merge on every rank."""
        with self._kernels():
            for mechanism in self.mechanisms:
                mechanism.merge(self.update_rounding)

    @contextlib.contextmanager
    def unmerged(self) -> Iterator[None]:
        """A checkpoint that leaves the trajectory alone: inside the block ``model.state_dict()``
        and this optimizer's ``state_dict()`` merge nothing, so the model's state holds the
        weights without the pending side-path updates (P-GAP's and AGZO's functional mode) and
        the optimizer's state carries them. Take both in the same block; loading both resumes
        the run bit for bit, and saving at any step leaves the run as it would have been.
        Outside the block ``state_dict()`` merges as before (an exported model holds the trained
        weights). Mutates nothing; nests."""
        previous, self.keeps_pending = self.keeps_pending, True
        try:
            yield
        finally:
            self.keeps_pending = previous

    def set_token_mask(self, mask: Optional[torch.Tensor]) -> None:
        """The (batch, seq) attention mask of the next step's batch, for the mechanisms that
        read activations (:class:`pgap.AGZO` leaves padded tokens out of its bases); a no-op
        for the others. Training loops may call it before every step."""
        for mechanism in self.mechanisms:
            mechanism.set_token_mask(mask)

    def close(self) -> None:
        """Merge pending updates and remove this optimizer's hooks from the model. The model
        then runs without them; do not step after."""
        self.merge()
        for mechanism in self.mechanisms:
            mechanism.close()
        self.mechanisms = []

    # -- distributed, diagnostics, state ---------------------------------------------------
    @property
    def world_size(self) -> int:
        """Ranks sharing the losses (1 without a process group)."""
        return self.reducer.world_size if self.reducer is not None else 1

    def _rank_fingerprint(self) -> Dict[str, Any]:
        """What every rank must agree on before the first step."""
        return {"optimizer": type(self).__name__, "seed": self.seed, "step": self.steps_done,
                "hyperparameters": self.hyperparameters(), "lr": self.lr,
                "parameters": [(t.name, list(t.shape)) for t in self.trainables]}

    def diagnostics(self) -> Dict[str, Any]:
        """Scalars of the last step: losses, projected gradient, lr, forwards (a new dict)."""
        return dict(self._diag, step=self.steps_done, forwards=self.forwards, lr=self.lr)

    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        """The optimizer's tensors to save (subclasses; :func:`pgap.state.field_tensors`)."""
        return {}

    def _load_state_tensors(self, tensors: Dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"unexpected tensors in state: {sorted(tensors)[:5]}")

    def _extra_state(self) -> Dict[str, Any]:
        """JSON-able state to save besides the tensors (subclasses)."""
        return {}

    def _load_extra_state(self, extra: Dict[str, Any]) -> None:
        pass
