"""MeZO and the shared ZOOptimizer machinery: keys, seeds, exact updates, state, errors."""
import math

import pytest
import torch
from torch import nn

import pgap
import pgap_kernels as pk
from pgap.seeds import (LOWRANK_PASSES, ROUNDING_STREAM, SEEDED_PASSES, RoundingPasses, derive_seed,
                        fnv1a32, random_sign, splitmix64)
from zo_problems import loss_along, loss_of, mlp_problem, poisoned, teacher_problem, tiny_llama, weights

FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}
# Two backends round the losses differently (a few float32 ulps of L ~ 10); g = (L+ - L-)/(2 eps)
# amplifies that by 1/(2 eps) = 500, and each step moves weights by lr*g*z (|z| < 6): over a few
# steps at lr 1e-2 the weights may differ by ~1e-5.
TRAJECTORY_TOL = {"rtol": 1e-4, "atol": 5e-5}


# -- keys and seeds ----------------------------------------------------------------------------
def test_rounding_passes_are_named_and_cannot_share_an_index():
    with pytest.raises(ValueError, match="'a' and 'b' share index 1"):
        RoundingPasses(a=1, b=1)
    with pytest.raises(ValueError, match="index must be an int >= 0"):
        RoundingPasses(a=-1)
    with pytest.raises(KeyError, match="no rounding pass 'merge'"):
        SEEDED_PASSES.index("merge")
    # the indices every trajectory recorded so far was rounded with
    assert [SEEDED_PASSES.index(n) for n in SEEDED_PASSES] == [0, 1]
    assert {n: LOWRANK_PASSES.index(n) for n in LOWRANK_PASSES} == {
        "matrices": 0, "vectors": 1, "matrices_undecayed": 2, "vectors_undecayed": 3, "merge": 15}
    assert LOWRANK_PASSES.seed(7, 3, "merge") == derive_seed(7, 3, ROUNDING_STREAM + 15)


def test_fnv1a32_known_vectors():
    # FNV-1a 32-bit test vectors (Fowler/Noll/Vo reference)
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_splitmix64_known_vector_and_seed_mixing():
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # first output of splitmix64 seeded with 0
    seeds = {derive_seed(s, t, j) for s in (0, 1) for t in range(50) for j in range(11)}
    assert len(seeds) == 2 * 50 * 11 and all(0 <= s < 1 << 64 for s in seeds)
    assert derive_seed(7, 3, 2) == derive_seed(7, 3, 2)
    signs = [random_sign(derive_seed(0, t)) for t in range(400)]
    assert set(signs) == {-1.0, 1.0} and abs(sum(signs)) < 80


def test_keys_do_not_depend_on_order_or_frozen_parameters():
    model, closure = mlp_problem()
    opt = pgap.MeZO(model, lr=1e-3)
    keys = {t.name: t.key for t in opt.trainables}
    model.embed.weight.requires_grad_(False)
    opt2 = pgap.MeZO(model, lr=1e-3)
    assert {t.name: t.key for t in opt2.trainables} == {k: v for k, v in keys.items() if k != "embed.weight"}
    assert keys["fc1.weight"] == fnv1a32("fc1.weight")


# -- MeZO --------------------------------------------------------------------------------------
def test_mezo_update_equals_reference_two_point_estimate():
    model, closure = mlp_problem()
    w0 = weights(model)
    lr, eps, seed = 1e-2, 1e-3, 123
    opt = pgap.MeZO(model, lr=lr, eps=eps, seed=seed)
    loss = opt.step(closure)
    s = derive_seed(seed, 0)
    z = {k: pk.gaussian(tuple(v.shape), s, key=fnv1a32(k)) for k, v in w0.items()}

    w1 = weights(model)
    plus, minus = (loss_along(model, closure, w0, z, c) for c in (eps, -eps))
    g = (plus - minus) / (2 * eps)
    d = opt.diagnostics()
    assert d["loss_plus"] == pytest.approx(plus, rel=1e-5) and d["loss_minus"] == pytest.approx(minus, rel=1e-5)
    assert d["projected_grad"] == pytest.approx(g, rel=1e-3, abs=1e-3)
    assert loss == pytest.approx(0.5 * (plus + minus), rel=1e-5)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k] - lr * d["projected_grad"] * z[k], **FP32_TOL)


def test_mezo_weight_decay_skips_bias_and_norm():
    model, closure = mlp_problem()
    w0 = weights(model)
    lr, eps, wd = 1e-2, 1e-3, 0.5
    opt = pgap.MeZO(model, lr=lr, eps=eps, weight_decay=wd, seed=5)
    opt.step(closure)
    g, s = opt.diagnostics()["projected_grad"], derive_seed(5, 0)
    decayed = {t.name for t in opt.trainables if t.decays}
    assert decayed == {"embed.weight", "fc1.weight", "fc2.weight"}
    for k, p in model.named_parameters():
        z = pk.gaussian(tuple(p.shape), s, key=fnv1a32(k))
        factor = 1 - lr * wd if k in decayed else 1.0
        torch.testing.assert_close(p.detach(), factor * w0[k] - lr * g * z, **FP32_TOL)


def test_mezo_three_passes_per_step(monkeypatch):
    model, closure = teacher_problem()
    opt = pgap.MeZO(model, lr=1e-3)
    calls = []
    real = pk.perturb_

    def counting(*args, **kw):
        calls.append(kw.get("decay", 1.0))
        return real(*args, **kw)

    monkeypatch.setattr(pk, "perturb_", counting)
    opt.step(closure)
    assert len(calls) == 3 and opt.forwards == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mezo_reduces_loss(dtype):
    model, closure = teacher_problem(seed=1, dtype=dtype)
    opt = pgap.MeZO(model, lr=1e-2, eps=1e-2, seed=0)
    first = loss_of(closure)
    for _ in range(400):
        opt.step(closure)
    assert loss_of(closure) < 0.4 * first


def test_mezo_reduces_loss_on_tiny_causal_lm():
    model, closure = tiny_llama()
    opt = pgap.MeZO(model, lr=3e-3, eps=1e-3, seed=0)
    first = loss_of(closure)
    losses = [opt.step(closure) for _ in range(150)]
    assert sum(losses[-20:]) / 20 < first - 0.05


def test_lr_scheduler_moves_lr_and_state_keeps_it():
    model, closure = teacher_problem()
    opt = pgap.MeZO(model, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(4):
        opt.step(closure)
        sched.step()
    assert opt.lr == pytest.approx(0.25)
    state = opt.state_dict()
    opt2 = pgap.MeZO(teacher_problem()[0], lr=1.0)
    opt2.load_state_dict(state)
    assert opt2.lr == pytest.approx(0.25) and opt2.steps_done == 4


def test_attached_mechanisms_are_driven_by_the_step_protocol():
    from pgap.mechanism import Mechanism

    calls = []

    class Recorder(Mechanism):
        def forward_checked(self):
            calls.append("checked")

        def abort(self):
            calls.append("abort")

        def merge(self, rounding_for):
            calls.append(("merge", rounding_for("update")))

        def set_token_mask(self, mask):
            calls.append(("mask", mask))

        def close(self):
            calls.append("close")

    model, closure = mlp_problem()
    opt = pgap.MeZO(model, lr=1e-2, mode="inplace")
    opt.attach(Recorder())
    opt.step(closure)
    assert calls == ["checked"]  # after the first perturbed forward, once per step
    with pytest.raises(pgap.NonFiniteLossError):
        opt.step(lambda: torch.tensor(float("nan")))
    assert calls == ["checked", "abort"]
    opt.set_token_mask(None)
    opt.close()
    assert calls[2:] == [("mask", None), ("merge", {}), "close"]  # float32: no rounding arguments
    assert opt.mechanisms == []


def test_state_dict_runs_torch_hooks_registered_by_users():
    model, closure = teacher_problem()
    opt = pgap.MeZO(model, lr=0.5)
    opt.step(closure)
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(("post", sd["format"], sd["step"])))
    state = opt.state_dict()
    assert seen == ["pre", ("post", "pgap.optimizer/1", 1)]
    assert state["param_groups"] == [{"lr": 0.5}]  # torch's "params" indices are not saved
    opt2 = pgap.MeZO(teacher_problem()[0], lr=1.0)
    opt2.register_load_state_dict_post_hook(lambda o: seen.append(("loaded", o.steps_done, o.lr)))
    opt2.load_state_dict(state)
    assert seen[-1] == ("loaded", 1, 0.5)
    assert [len(g["params"]) for g in opt2.param_groups] == [len(opt2.trainables)]


# -- determinism, resume, backends ---------------------------------------------------------------
def _run(factory, make_opt, steps):
    model, closure = factory()
    opt = make_opt(model)
    losses = [opt.step(closure) for _ in range(steps)]
    return model, opt, losses


def test_same_seed_same_trajectory_bitwise_other_seed_differs():
    m1, _, l1 = _run(mlp_problem, lambda m: pgap.MeZO(m, lr=1e-2, seed=3), 5)
    m2, _, l2 = _run(mlp_problem, lambda m: pgap.MeZO(m, lr=1e-2, seed=3), 5)
    m3, _, l3 = _run(mlp_problem, lambda m: pgap.MeZO(m, lr=1e-2, seed=4), 5)
    assert l1 == l2 and l1 != l3
    for (k, a), b in zip(weights(m1).items(), weights(m2).values()):
        assert torch.equal(a, b), k


def test_mezo_exact_resume_from_safetensors(tmp_path):
    make = lambda m: pgap.MeZO(m, lr=1e-2, weight_decay=0.1, seed=9)  # noqa: E731
    full, _, losses = _run(mlp_problem, make, 8)
    model, closure = mlp_problem()
    opt = make(model)
    for _ in range(4):
        opt.step(closure)
    pgap.save_optimizer(opt, tmp_path / "opt.safetensors")
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    model2, closure2 = mlp_problem(seed=0)
    model2.load_state_dict(saved_model)
    opt2 = make(model2)
    pgap.load_optimizer(opt2, tmp_path / "opt.safetensors")
    rest = [opt2.step(closure2) for _ in range(4)]
    assert rest == losses[4:]
    for (k, a), b in zip(weights(full).items(), weights(model2).values()):
        assert torch.equal(a, b), k


def test_every_backend_gives_the_reference_trajectory():
    ref_model, _, ref_losses = _run(teacher_problem, lambda m: pgap.MeZO(m, lr=1e-2, backend="reference"), 4)
    for backend in pk.available_backends("cpu"):
        model, _, losses = _run(teacher_problem, lambda m: pgap.MeZO(m, lr=1e-2, backend=backend), 4)
        assert losses == pytest.approx(ref_losses, rel=1e-5), backend
        for (k, a), b in zip(weights(ref_model).items(), weights(model).values()):
            torch.testing.assert_close(b, a, **TRAJECTORY_TOL, msg=f"{backend} {k}")


# -- diagnostics ---------------------------------------------------------------------------------
def test_gradient_alignment_is_a_cosine_and_leaves_grads():
    model, closure = teacher_problem()
    opt = pgap.MeZO(model, lr=1e-3)
    with pytest.raises(RuntimeError, match="at least one step"):
        opt.gradient_alignment(closure)
    opt.step(closure)
    out = opt.gradient_alignment(closure)
    assert -1.0 <= out["cosine"] <= 1.0 and set(out["per_parameter"]) == {"weight", "bias"}
    assert all(p.grad is None for p in model.parameters())
    # the cosine is the one between z and the autograd gradient
    grads = opt.backprop_gradient(closure)
    z = opt.last_direction()
    dot = sum(float((z[k] * grads[k]).sum()) for k in z)
    norm = math.sqrt(sum(float(z[k].norm()) ** 2 for k in z) * sum(float(grads[k].norm()) ** 2 for k in z))
    assert out["cosine"] == pytest.approx(dot / norm, rel=1e-4)


# -- errors --------------------------------------------------------------------------------------
def test_non_finite_loss_restores_weights_and_raises():
    model, closure = teacher_problem()
    w0 = weights(model)
    opt = pgap.MeZO(model, lr=1e-3)
    with pytest.raises(pgap.NonFiniteLossError, match="θ−ε·P"):
        opt.step(poisoned(closure, 2, float("nan")))
    assert opt.steps_done == 0
    for k, v in weights(model).items():
        torch.testing.assert_close(v, w0[k], **FP32_TOL)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"lr": -1.0}, ValueError, "lr"), ({"lr": float("nan")}, ValueError, "lr"),
    ({"lr": "1"}, TypeError, "lr"), ({"lr": 1e-3, "eps": 0.0}, ValueError, "eps"),
    ({"lr": 1e-3, "eps": -1e-3}, ValueError, "eps"), ({"lr": 1e-3, "weight_decay": -1}, ValueError, "weight_decay"),
    ({"lr": 1e-3, "seed": -1}, ValueError, "seed"), ({"lr": 1e-3, "seed": 1.5}, TypeError, "seed"),
    ({"lr": 1e-3, "backend": "bogus"}, ValueError, "backend"),
])
def test_mezo_bad_arguments(kwargs, err, match):
    model, _ = teacher_problem()
    with pytest.raises(err, match=match):
        pgap.MeZO(model, **kwargs)


def test_model_without_trainable_parameters_and_bad_model():
    model, _ = teacher_problem()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        pgap.MeZO(model, lr=1e-3)
    with pytest.raises(TypeError, match="nn.Module"):
        pgap.MeZO([torch.zeros(3, requires_grad=True)], lr=1e-3)
    model64 = nn.Linear(3, 3).double()
    with pytest.raises(TypeError, match="float64"):
        pgap.MeZO(model64, lr=1e-3)


def test_step_needs_a_closure_and_load_rejects_other_states():
    model, closure = teacher_problem()
    opt = pgap.MeZO(model, lr=1e-3)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="state dict"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    other = pgap.PGAP(teacher_problem()[0], lr=1e-3, rank=2)
    with pytest.raises(ValueError, match="saved by PGAP"):
        opt.load_state_dict(other.state_dict())
    mlp, _ = mlp_problem()
    with pytest.raises(ValueError, match="other parameters"):
        opt.load_state_dict(pgap.MeZO(mlp, lr=1e-3).state_dict())


def test_pgap_package_uses_only_the_public_kernel_api():
    import ast
    from pathlib import Path

    root = Path(pgap.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module + "." + a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "pgap_kernels":
                names = ["pgap_kernels." + node.attr]
            for name in names:
                if name.startswith("pgap_kernels."):
                    assert name.split(".")[1] in pk.__all__, f"{path.name} uses {name}"
