"""MeZO-GV, MeZO-Greedy and LDSD: directions and μ updates against materialized draws."""
import math

import pytest
import torch

import pgap
import pgap_kernels as pk
from pgap.seeds import PROBE_STREAM, derive_seed, fnv1a32
from zo_problems import Recorder, loss_of, mlp_problem, poisoned, quadratic_problem, teacher_problem, weights

FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}


def draws(model, seed, probe, step=0):
    s = derive_seed(seed, step, PROBE_STREAM + probe)
    return {k: pk.gaussian(tuple(p.shape), s, key=fnv1a32(k)) for k, p in model.named_parameters()}


@pytest.mark.parametrize("M, frac, normalize", [(4, 0.5, False), (5, 0.4, False), (3, 0.5, True)])
def test_guiding_vector_equals_the_one_built_from_materialized_draws(M, frac, normalize):
    model, closure = mlp_problem()
    w0 = weights(model)
    rec = Recorder(closure)
    lr, seed = 1e-2, 21
    opt = pgap.MeZOGV(model, lr=lr, num_probes=M, top_frac=frac, normalize=normalize, seed=seed)
    opt.step(rec)
    assert opt.forwards == M + 2
    probe_losses = rec.losses[:M]
    assert opt.diagnostics()["probe_losses"] == pytest.approx(probe_losses)
    top = math.floor(frac * M)
    order = sorted(range(M), key=lambda i: probe_losses[i])
    z = [draws(model, seed, i) for i in range(M)]
    v = {k: sum(z[i][k] for i in order[:top]) / top - sum(z[i][k] for i in order[top:]) / (M - top)
         for k in w0}
    if normalize:
        norm = math.sqrt(top * (1 / top) ** 2 + (M - top) * (1 / (M - top)) ** 2)
        v = {k: x / norm for k, x in v.items()}
    got = opt.last_direction()
    g = opt.diagnostics()["projected_grad"]
    for k in w0:
        torch.testing.assert_close(got[k], v[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.state_dict()[k], w0[k] - lr * g * v[k], **FP32_TOL)


def test_greedy_steps_along_the_lowest_loss_probe():
    model, closure = mlp_problem()
    w0 = weights(model)
    rec = Recorder(closure)
    opt = pgap.MeZOGreedy(model, lr=1e-2, num_probes=5, seed=2)
    opt.step(rec)
    best = min(range(5), key=lambda i: rec.losses[i])
    assert opt.diagnostics()["best_probe"] == best and opt.forwards == 7
    # the re-evaluated L(θ + ε z*) equals the probe's loss
    assert rec.losses[5] == pytest.approx(rec.losses[best], rel=1e-6)
    z = draws(model, 2, best)
    g = opt.diagnostics()["projected_grad"]
    for k in w0:
        torch.testing.assert_close(model.state_dict()[k], w0[k] - 1e-2 * g * z[k], **FP32_TOL)


@pytest.mark.parametrize("base", ["sgd", "momentum"])
def test_ldsd_mu_and_theta_updates_equal_the_reference_formulas(base):
    model, closure = teacher_problem()
    rec = Recorder(closure)
    k, sigma, lr, lr_mu, eps, seed, m = 4, 0.5, 1e-2, 0.3, 1e-3, 5, 0.9
    opt = pgap.LDSD(model, lr=lr, eps=eps, num_probes=k, sigma=sigma, lr_mu=lr_mu, base=base,
                    momentum=m, seed=seed)
    mu = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    buf = None
    for step in range(3):
        w0 = weights(model)
        rec.losses.clear()
        opt.step(rec)
        f = rec.losses[:k]
        xi = [draws(model, seed, i, step) for i in range(k)]
        best = min(range(k), key=lambda i: f[i])
        g = opt.diagnostics()["projected_grad"]
        ghat = {n: g * (mu[n] + sigma * xi[best][n]) for n in mu}
        if base == "sgd":
            expected = {n: w0[n] - lr * ghat[n] for n in mu}
        else:
            buf = ghat if buf is None else {n: m * buf[n] + ghat[n] for n in mu}
            expected = {n: w0[n] - lr * buf[n] for n in mu}
        for n in mu:
            torch.testing.assert_close(model.state_dict()[n], expected[n], rtol=1e-5, atol=1e-5)
        c = [(k * fi - sum(f)) / (k - 1) for fi in f]
        # μ ← μ − lr_mu/(k σ²) Σ c_i (z_i − μ), z_i − μ = σ ξ_i of probe i
        mu = {n: mu[n] - lr_mu / (k * sigma ** 2) * sum(ci * sigma * x[n] for ci, x in zip(c, xi))
              for n in mu}
        for n in mu:
            torch.testing.assert_close(opt.mu[n], mu[n], rtol=1e-5, atol=1e-6)
    assert opt.forwards == 3 * (k + 2)


def test_ldsd_with_paired_draws_beats_greedy_at_equal_forward_passes():
    # ../shared/research/zo_ldsd.md §1.2: d = 1000 quadratic, k = 5, σ = 1, lr 1e-4, lr_mu 3
    results = {}
    for name, make in [("greedy", lambda m: pgap.MeZOGreedy(m, lr=1e-4, num_probes=5, seed=0)),
                       ("ldsd", lambda m: pgap.LDSD(m, lr=1e-4, num_probes=5, lr_mu=3.0, seed=0))]:
        model, closure = quadratic_problem(seed=0)
        opt = make(model)
        while opt.forwards < 7000:
            opt.step(closure)
        results[name] = (loss_of(closure), opt.forwards)
    assert results["greedy"][1] == results["ldsd"][1] == 7000
    assert results["ldsd"][0] < 0.7 * results["greedy"][0], results


def test_ldsd_without_mu_learning_is_greedy():
    out = []
    for make in (lambda m: pgap.MeZOGreedy(m, lr=1e-2, num_probes=3, seed=4),
                 lambda m: pgap.LDSD(m, lr=1e-2, num_probes=3, lr_mu=0.0, seed=4)):
        model, closure = mlp_problem()
        opt = make(model)
        out.append(([opt.step(closure) for _ in range(3)], weights(model)))
    assert out[0][0] == out[1][0]
    for k in out[0][1]:
        assert torch.equal(out[0][1][k], out[1][1][k])


@pytest.mark.parametrize("make", [
    lambda m: pgap.MeZOGV(m, lr=5e-3), lambda m: pgap.MeZOGreedy(m, lr=5e-3),
    lambda m: pgap.LDSD(m, lr=5e-3, lr_mu=1e-3), lambda m: pgap.LDSD(m, lr=2e-3, lr_mu=1e-3, base="momentum", momentum=0.5),
], ids=["gv", "greedy", "ldsd", "ldsd-momentum"])
def test_every_method_reduces_the_loss(make):
    model, closure = teacher_problem(seed=1)
    opt = make(model)
    first = loss_of(closure)
    while opt.forwards < 1200:
        opt.step(closure)
    assert loss_of(closure) < 0.8 * first


@pytest.mark.parametrize("make", [
    lambda m: pgap.MeZOGV(m, lr=1e-2, num_probes=3, weight_decay=0.1, seed=1),
    lambda m: pgap.MeZOGreedy(m, lr=1e-2, num_probes=3, seed=1),
    lambda m: pgap.LDSD(m, lr=1e-2, num_probes=3, lr_mu=0.1, base="momentum", seed=1),
], ids=["gv", "greedy", "ldsd-momentum"])
def test_determinism_and_exact_resume(tmp_path, make):
    model, closure = mlp_problem()
    opt = make(model)
    losses = [opt.step(closure) for _ in range(3)]
    pgap.save_optimizer(opt, tmp_path / "o.safetensors")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    losses += [opt.step(closure) for _ in range(3)]
    model2, closure2 = mlp_problem()
    model2.load_state_dict(saved)
    opt2 = make(model2)
    pgap.load_optimizer(opt2, tmp_path / "o.safetensors")
    assert [opt2.step(closure2) for _ in range(3)] == losses[3:]
    for (k, a), b in zip(weights(model).items(), weights(model2).values()):
        assert torch.equal(a, b), k
    model3, closure3 = mlp_problem()
    opt3 = make(model3)
    assert [opt3.step(closure3) for _ in range(6)] == losses


@pytest.mark.parametrize("cls, kwargs, err, match", [
    (pgap.MeZOGV, {"num_probes": 1}, ValueError, "num_probes"),
    (pgap.MeZOGV, {"top_frac": 0.0}, ValueError, "top_frac"),
    (pgap.MeZOGV, {"top_frac": 1.0}, ValueError, "top_frac"),
    (pgap.MeZOGV, {"num_probes": 2, "top_frac": 0.2}, ValueError, "top_frac"),
    (pgap.MeZOGV, {"normalize": 1}, TypeError, "normalize"),
    (pgap.MeZOGreedy, {"num_probes": 0}, ValueError, "num_probes"),
    (pgap.MeZOGreedy, {"eps": 0.0}, ValueError, "eps"),
    (pgap.LDSD, {"sigma": 0.0}, ValueError, "sigma"),
    (pgap.LDSD, {"lr_mu": -1.0}, ValueError, "lr_mu"),
    (pgap.LDSD, {"base": "adam"}, ValueError, "base"),
    (pgap.LDSD, {"momentum": 1.0}, ValueError, "momentum"),
    (pgap.LDSD, {"num_probes": 0}, ValueError, "num_probes"),
])
def test_bad_arguments(cls, kwargs, err, match):
    model, _ = teacher_problem()
    with pytest.raises(err, match=match):
        cls(model, lr=1e-3, **kwargs)


def test_non_finite_probe_loss_restores_weights():
    model, closure = mlp_problem()
    w0 = weights(model)
    opt = pgap.LDSD(model, lr=1e-3, num_probes=3, lr_mu=0.1)
    with pytest.raises(pgap.NonFiniteLossError, match="probe"):
        opt.step(poisoned(closure, 2, float("nan")))
    for k, v in weights(model).items():
        torch.testing.assert_close(v, w0[k], **FP32_TOL)
