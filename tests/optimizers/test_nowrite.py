"""Functional (no-write) mode: the forwards see perturbed copies, the weights receive only the
update. Same trajectory as in place in float32; bitwise-unchanged bf16/fp16 weights at lr = 0;
nothing left swapped after an exception; at most one module's copies alive at a time."""
import pytest
import torch
from torch import nn

import pgap
from pgap.methods import build_optimizer
from zo_problems import mlp_problem, tiny_llama, weights

PGAP = {"rank": 2, "window": 2, "probes": 2}
CONFIGS = [
    ("mezo", {}), ("mezo-gv", {"num_probes": 2}), ("mezo-greedy", {"num_probes": 2}),
    ("ldsd", {"num_probes": 2}), ("ldsd", {"num_probes": 2, "base": "momentum"}),
    ("agzo", {"rank": 2, "refresh": 2}), ("pgap", PGAP), ("pgap", dict(PGAP, subspace="activation")),
]
IDS = [m + ("-" + "-".join(str(v) for k, v in o.items() if k in ("base", "subspace")) if
            any(k in ("base", "subspace") for k in o) else "") for m, o in CONFIGS]
# float32: in place rounds θ ± ε·P into the weights and back (one rounding per pass), functional
# never does; over 3 steps the two stay within these bounds
LOSS_TOL = 5e-5
WEIGHT_TOL = {"rtol": 1e-4, "atol": 1e-5}


def run(method, options, mode, dtype=torch.float32, lr=1e-2, steps=3, problem=mlp_problem):
    model, closure = problem(seed=3)
    model.to(dtype)
    opt = build_optimizer(method, model, lr=lr, eps=1e-2, seed=1, mode=mode, **options)
    losses = [opt.step(closure) for _ in range(steps)]
    opt.merge()
    return model, opt, losses


@pytest.mark.parametrize("method, options", CONFIGS, ids=IDS)
def test_functional_follows_the_inplace_trajectory_in_float32(method, options):
    m_in, _, l_in = run(method, options, "inplace")
    m_fn, opt, l_fn = run(method, options, "functional")
    assert opt.mode == "functional"
    assert max(abs(a - b) for a, b in zip(l_in, l_fn)) < LOSS_TOL
    w_in, w_fn = weights(m_in), weights(m_fn)
    moved = max(float((w_fn[k] - weights(mlp_problem(seed=3)[0])[k]).abs().max()) for k in w_fn)
    assert moved > 1e-3  # the run did train
    for k in w_in:
        torch.testing.assert_close(w_fn[k], w_in[k], **WEIGHT_TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method, options", CONFIGS, ids=IDS)
def test_lr0_leaves_16bit_weights_bitwise_unchanged_by_default(method, options, dtype):
    model, closure = mlp_problem(seed=3)
    model.to(dtype)
    before = weights(model)
    opt = build_optimizer(method, model, lr=0.0, eps=1e-2, seed=1, **options)
    assert opt.mode == "functional"  # "auto" for 16-bit weights
    for _ in range(6):
        opt.step(closure)
    opt.merge()
    for k, v in weights(model).items():
        assert torch.equal(v, before[k]), k


def test_inplace_16bit_weights_drift_at_lr0():
    """The failure functional mode removes (issue 14): in place, bf16 weights drift at lr = 0."""
    model, closure = mlp_problem(seed=3)
    model.to(torch.bfloat16)
    before = weights(model)
    opt = pgap.MeZO(model, lr=0.0, eps=1e-2, mode="inplace")
    for _ in range(6):
        opt.step(closure)
    changed = sum(int((v != before[k]).sum()) for k, v in weights(model).items())
    assert changed > 0


def test_auto_mode_choices():
    model, _ = mlp_problem()
    assert pgap.MeZO(model, lr=1e-3).mode == "inplace"
    model.to(torch.bfloat16)
    assert pgap.MeZO(model, lr=1e-3).mode == "functional"
    assert pgap.AGZO(model, lr=1e-3, rank=2).mode == "functional"
    # the low-rank side paths do not take weight decay: auto stays in place there
    assert pgap.AGZO(model, lr=1e-3, rank=2, weight_decay=0.1).mode == "inplace"
    assert pgap.MeZO(model, lr=1e-3, weight_decay=0.1).mode == "functional"
    with pytest.raises(ValueError, match="mode"):
        pgap.MeZO(model, lr=1e-3, mode="lazy")
    with pytest.raises(ValueError, match="rounding"):
        pgap.MeZO(model, lr=1e-3, rounding="up")


class RaiseInside:
    """A forward pre-hook (registered after the optimizer's) that raises once, inside ``module``'s
    forward, while the views have swapped in its perturbed copies."""

    def __init__(self, module: nn.Module, exc: BaseException, at: int) -> None:
        self.exc, self.at, self.calls = exc, at, 0
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, inputs):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("oom")], ids=["ctrl-c", "error"])
@pytest.mark.parametrize("at", [1, 2])
def test_an_exception_inside_a_module_forward_leaves_nothing_swapped(exc, at):
    model, closure = mlp_problem(seed=3)
    model.to(torch.bfloat16)
    opt = pgap.MeZO(model, lr=1e-2, eps=1e-2)
    opt.step(closure)
    before = weights(model)
    stored = {n: p.data for n, p in model.named_parameters()}
    trap = RaiseInside(model.fc1, exc, at)
    with pytest.raises(type(exc)):
        opt.step(closure)
    trap.handle.remove()
    for n, p in model.named_parameters():
        assert p.data is stored[n] or p.data.data_ptr() == stored[n].data_ptr(), n
        assert torch.equal(p.detach(), before[n]), n
    assert opt.steps_done == 1
    opt.step(closure)  # the run goes on
    assert opt.steps_done == 2


def test_at_most_one_module_holds_copies():
    """While any module runs, only that module's parameters are swapped for copies (memory:
    one module's parameters beyond what the forward holds); tied weights included."""
    pytest.importorskip("transformers")
    model, closure = tiny_llama(seed=0, tie=True)
    model.to(torch.bfloat16)
    stored = {id(p): p.data.data_ptr() for p in model.parameters()}
    seen = []

    def probe(module, inputs, output=None):
        swapped = [id(p) for p in model.parameters() if p.data.data_ptr() != stored[id(p)]]
        own = {id(p) for p in module.parameters(recurse=False)}
        seen.append((set(swapped), own))

    opt = pgap.MeZO(model, lr=1e-3, eps=1e-3)  # its hooks first: our pre-hooks see the copies
    handles = [m.register_forward_pre_hook(probe) for m in model.modules()
               if list(m.parameters(recurse=False))]
    opt.step(closure)
    for h in handles:
        h.remove()
    assert seen
    assert any(swapped for swapped, _ in seen)
    for swapped, own in seen:
        assert swapped <= own
    assert all(p.data.data_ptr() == stored[id(p)] for p in model.parameters())


def test_functional_view_equals_the_inplace_perturbation_bitwise():
    """What a module sees under the views is exactly what perturb_ would have written."""
    import pgap_kernels

    model, closure = mlp_problem(seed=5)
    model.to(torch.bfloat16)
    opt = pgap.MeZO(model, lr=0.0, eps=1e-2, mode="functional")
    seen = {}
    def grab(module, inputs):  # a pre-hook registered after the optimizer's: sees the copy
        seen.setdefault("w", module.weight.detach().clone())

    model.fc1.register_forward_pre_hook(grab)
    opt.step(closure)
    expected = model.fc1.weight.detach().clone()
    t = next(t for t in opt.trainables if t.name == "fc1.weight")
    pgap_kernels.perturb_(expected, [opt.step_seed(0)], [1e-2], keys=[t.key])
    assert torch.equal(seen["w"], expected)


def test_a_module_returning_a_view_of_its_weight_keeps_its_copy():
    """The copies share one reused arena; an output that views a copy must not be overwritten
    by the next module's copy."""

    class Table(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 8))

        def forward(self, n: int) -> torch.Tensor:
            return self.weight[:n]  # a view of the (perturbed) parameter

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table, self.fc = Table(), nn.Linear(8, 8)

        def forward(self) -> torch.Tensor:
            rows = self.table(3)
            return (self.fc(rows) + rows).square().mean()

    torch.manual_seed(0)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    la = pgap.MeZO(a, lr=1e-2, eps=1e-2, mode="inplace")
    lb = pgap.MeZO(b, lr=1e-2, eps=1e-2, mode="functional")
    for _ in range(3):
        assert abs(la.step(a) - lb.step(b)) < 1e-5
