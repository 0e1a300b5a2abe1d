"""Atomic steps: an exception at any forward of a step (probes and basis forwards included), from
the closure or a kernel, leaves the weights at θ (within one rounding) and the optimizer as it
was before the step; the run then continues as if nothing happened. Ctrl-C during the update
passes is delivered after the step completes."""
import os
import signal

import pytest
import torch

import pgap
from pgap.methods import build_optimizer
from zo_problems import mlp_problem, weights

PGAP = {"rank": 2, "window": 2, "probes": 2}
AGZO = {"rank": 2, "refresh": 2, "first_iters": 0}
CONFIGS = [
    ("mezo", {}), ("mezo-gv", {"num_probes": 2}), ("mezo-greedy", {"num_probes": 2}),
    ("ldsd", {"num_probes": 2, "lr_mu": 0.1}), ("ldsd", {"num_probes": 2, "base": "momentum"}),
    ("pgap", PGAP), ("pgap", dict(PGAP, mode="functional")),
    ("pgap", dict(PGAP, subspace="activation", mode="functional")),
    ("agzo", AGZO), ("agzo", dict(AGZO, mode="functional")),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items() if k in ('mode', 'base', 'subspace'))}".rstrip("-")
       for m, o in CONFIGS]
TARGET = 2  # P-GAP's window starts and AGZO refreshes at step 2
# the undo pass adds −c·P to θ + c·P: one float32 rounding per element
UNDO_TOL = {"rtol": 1e-6, "atol": 1e-6}


class Interrupting:
    """The closure, except that its ``at``-th call (1-based) raises ``exc``."""

    def __init__(self, closure, at: int, exc: BaseException) -> None:
        self.closure, self.at, self.exc, self.calls = closure, at, exc, 0

    def __call__(self):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return self.closure()


def make(method, options):
    model, closure = mlp_problem(seed=3)
    opt = build_optimizer(method, model, lr=1e-2, eps=1e-2, seed=1, **options)
    return model, closure, opt


def flat_state(opt):
    state = opt.state_dict()
    tensors = {k: v.clone() for k, v in state["tensors"].items()}
    return state["step"], state["forwards"], tensors


def forwards_of_step(method, options, step):
    model, closure, opt = make(method, options)
    for _ in range(step):
        opt.step(closure)
    before = opt.forwards
    opt.step(closure)
    return opt.forwards - before


@pytest.mark.parametrize("method, options", CONFIGS, ids=IDS)
@pytest.mark.parametrize("target", [0, TARGET], ids=["first-step", "window-step"])
def test_a_raise_at_any_forward_restores_weights_and_state(method, options, target):
    _, ref_closure, ref = make(method, options)
    ref_losses = [ref.step(ref_closure) for _ in range(target + 2)]
    count = forwards_of_step(method, options, target)
    assert count >= 2
    for at in range(1, count + 1):
        model, closure, opt = make(method, options)
        for _ in range(target):
            opt.step(closure)
        opt.merge()  # functional modes: compare the effective weights (merging keeps them)
        w0, s0 = weights(model), flat_state(opt)
        exc = KeyboardInterrupt() if at % 2 == 0 else RuntimeError("data error")
        with pytest.raises(type(exc)):
            opt.step(Interrupting(closure, at, exc))
        opt.merge()
        for k, w in weights(model).items():
            torch.testing.assert_close(w, w0[k], **UNDO_TOL, msg=f"forward {at}: {k}")
        step, forwards, tensors = flat_state(opt)
        assert (step, forwards) == s0[:2], f"forward {at}"
        assert tensors.keys() == s0[2].keys()
        for k, v in tensors.items():
            torch.testing.assert_close(v, s0[2][k], **UNDO_TOL, msg=f"forward {at}: state {k}")
        # the run goes on as if the failed attempt had not happened
        rest = [opt.step(closure) for _ in range(2)]
        assert rest == pytest.approx(ref_losses[target:], rel=1e-4, abs=1e-6), f"forward {at}"


def test_a_kernel_error_between_forwards_restores_the_weights(monkeypatch):
    """The −2ε pass fails (a kernel's argument check): the weights still hold θ + ε·z, and the
    step takes them back."""
    model, closure, opt = make("mezo", {})
    opt.step(closure)
    w0 = weights(model)
    real = pgap.ZOOptimizer.perturb
    calls = []

    def failing(self, trainables, seeds, coeffs, **kw):
        calls.append(coeffs)
        if len(calls) == 2:
            raise ValueError("kernel refused its arguments")
        return real(self, trainables, seeds, coeffs, **kw)
    monkeypatch.setattr(pgap.ZOOptimizer, "perturb", failing)
    with pytest.raises(ValueError, match="kernel refused"):
        opt.step(closure)
    monkeypatch.setattr(pgap.ZOOptimizer, "perturb", real)
    for k, w in weights(model).items():
        torch.testing.assert_close(w, w0[k], **UNDO_TOL, msg=k)
    assert opt.steps_done == 1 and opt.forwards == 2


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, also where the test process
    was started with SIGINT ignored (a background job of a non-interactive shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_update_is_delivered_after_the_step(default_sigint):
    model, closure, opt = make("mezo", {})
    ref_model, ref_closure, ref = make("mezo", {})
    ref.step(ref_closure)
    real_update = opt._update

    def update_then_interrupted(direction, g):
        os.kill(os.getpid(), signal.SIGINT)  # arrives inside the update: held until it ends
        real_update(direction, g)
    opt._update = update_then_interrupted
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert opt.steps_done == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for k, w in weights(model).items():
        assert torch.equal(w, weights(ref_model)[k]), k



@pytest.mark.parametrize("method, options", CONFIGS, ids=IDS)
def test_a_step_inside_a_users_autocast_equals_autocast_per_forward(method, options):
    """Around a whole step, autocast's cast cache would give the second forward the first one's
    bf16 weights (g = 0, silently) and the optimizer's own algebra would run in bf16: step()
    gives each forward its own region without the cache, and the rest none, so the step equals
    one whose closure enters bf16 autocast itself (pgap.dtypes.compute_context)."""
    from pgap.dtypes import compute_context

    runs = []
    for outer in (True, False):
        model, closure, opt = make(method, options)
        inner = closure if outer else (lambda c=closure: _in_bf16(c, compute_context))
        for _ in range(TARGET + 1):
            if outer:
                with torch.autocast("cpu", dtype=torch.bfloat16):  # cache on: torch's default
                    opt.step(inner)
            else:
                opt.step(inner)
        runs.append(([p.detach().clone() for p in model.parameters()], opt.diagnostics()))
    (w_outer, d_outer), (w_inner, d_inner) = runs
    assert d_outer["projected_grad"] != 0 and d_outer["projected_grad"] == d_inner["projected_grad"]
    assert all(torch.equal(a, b) for a, b in zip(w_outer, w_inner))


def _in_bf16(closure, compute_context):
    with compute_context(torch.bfloat16, "cpu"):
        return closure()
