"""P-GAP: probe subspace, alignment, schedules, functional mode, ablations, state and errors."""
import math

import pytest
import torch

import pgap
import pgap_kernels as pk
from pgap.methods import METHODS
from pgap.seeds import PROBE_STREAM, derive_seed, fnv1a32, random_sign
from zo_problems import (Recorder, loss_of, mlp_problem, poisoned, resumed_run, teacher_problem,
                         tiny_llama, weights)

FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}
# inplace vs functional: W + U(A + cZ)V^T computed in a different order; losses agree to float32
# rounding amplified by 1/(2 eps) in g (see test_optimizers.TRAJECTORY_TOL)
# the weights move ~0.02 in these tests; the modes round differently by up to 7.8e-5 on an Intel
# Xeon (torch's CPU GEMMs; < 5e-5 on AMD EPYC)
MODE_TOL = {"rtol": 1e-4, "atol": 1e-4}


def test_probe_subspace_is_the_top_r_svd_of_the_materialized_probe_sum():
    model, closure = teacher_problem(d_in=20, d_out=12)
    w0 = weights(model)
    h, eps, seed, rank = 6, 1e-3, 11, 3
    rec = Recorder(closure)
    opt = pgap.PGAP(model, lr=1e-3, eps=eps, rank=rank, probes=h, window=5, seed=seed,
                    svd_oversample=10)
    opt.step(rec)
    assert opt.forwards == 2 * h + 2
    seeds = [derive_seed(seed, 0, PROBE_STREAM + j) for j in range(h)]
    rhos = [(rec.losses[2 * j] - rec.losses[2 * j + 1]) / (2 * eps) for j in range(h)]
    key = fnv1a32("weight")
    S = sum(r / h * pk.gaussian((12, 20), s, key=key) for r, s in zip(rhos, seeds))
    U, sig, Vh = torch.linalg.svd(S.double())
    st = opt.matrices[0]
    # q = min(rank + 10, 12, 20) = 12 = m: the randomized SVD is exact here
    torch.testing.assert_close(torch.diag(st.S).double(), sig[:rank], rtol=1e-4, atol=1e-5)
    proj = st.U.double() @ st.U.double().T
    torch.testing.assert_close(proj, U[:, :rank] @ U[:, :rank].T, atol=1e-4, rtol=0)
    # probes restored the weights before the step: the bias moved only by the step itself
    z_bias = pk.gaussian((12,), derive_seed(seed, 0), key=fnv1a32("bias"))
    g = opt.diagnostics()["projected_grad"]
    torch.testing.assert_close(model.bias.detach(), w0["bias"] - 1e-3 * g * z_bias, **FP32_TOL)


@pytest.mark.parametrize("delta", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("xi", ["per_matrix", "shared"])
def test_perturbation_satisfies_the_alignment_condition(delta, xi):
    model, closure = mlp_problem()
    opt = pgap.PGAP(model, lr=1e-3, rank=4, probes=4, window=10, delta=delta, xi=xi, seed=2)
    for _ in range(3):
        opt.step(closure)
    P = opt.last_direction()
    seed = opt.step_seed(2)
    for st in opt.matrices:
        est = st.U @ st.S @ st.V.T
        sign = random_sign(seed) if xi == "shared" else random_sign(seed, st.trainable.key)
        inner = float((P[st.name] * est).sum())
        # P = scale·U·Z·V^T (default scale sqrt(m·n)/r) and <Z, S_r> = xi·sqrt(delta)·||S_r||
        expected = st.scale * sign * math.sqrt(delta) * float(torch.linalg.matrix_norm(st.S))
        assert inner == pytest.approx(expected, rel=1e-4, abs=1e-5), st.name
        # P lies in span(U) x span(V)
        Pm = P[st.name]
        torch.testing.assert_close(st.U @ (st.U.T @ Pm @ st.V) @ st.V.T, Pm, atol=1e-5, rtol=1e-4)


def test_the_written_perturbation_is_u_z_vt_and_vectors_get_plain_gaussians():
    model, closure = mlp_problem()
    w0 = weights(model)
    seen = {}

    def snoop():
        if not seen:
            seen.update(weights(model))
        return closure()

    opt = pgap.PGAP(model, lr=0.0, rank=3, probes=2, window=10, subspace="random", align=False,
                    eps=1e-2, seed=4)
    opt.step(snoop)  # no probes with subspace="random", align=False: first forward is at θ+εP
    assert opt.forwards == 2
    P = opt.last_direction()
    for k in w0:
        torch.testing.assert_close(seen[k], w0[k] + 1e-2 * P[k], **FP32_TOL)
    s = opt.step_seed(0)
    torch.testing.assert_close(P["fc1.bias"], pk.gaussian((32,), s, key=fnv1a32("fc1.bias")))
    st = {m.name: m for m in opt.matrices}["fc1.weight"]
    Z0 = pk.gaussian((3, 3), s, key=fnv1a32("fc1.weight#Z"))
    m, n = st.shape  # align=False: Z = Z0, times the default scale sqrt(m·n)/r
    torch.testing.assert_close(st.Z, Z0 * math.sqrt(m * n) / 3)
    # lr=0: weights restored
    for k, v in weights(model).items():
        torch.testing.assert_close(v, w0[k], **FP32_TOL)


def test_subzero_scale_and_random_bases_are_orthonormal():
    model, closure = mlp_problem()
    opt = pgap.PGAP(model, lr=1e-3, rank=4, probes=2, subspace="random", scale="subzero")
    opt.step(closure)
    assert opt.forwards == 2 * 2 + 2  # align=True with random bases still probes for S_r
    for st in opt.matrices:
        m, n = st.shape
        assert st.scale == pytest.approx(math.sqrt(m * n) / st.rank)
        eye = torch.eye(st.rank)
        torch.testing.assert_close(st.U.T @ st.U, eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(st.V.T @ st.V, eye, atol=1e-5, rtol=0)


def test_subzero_is_pgap_in_a_random_subspace_without_probes():
    runs = []
    for make in (lambda m: pgap.SubZero(m, lr=1e-2, rank=3, window=4, seed=5),
                 lambda m: pgap.PGAP(m, lr=1e-2, rank=3, window=4, seed=5, subspace="random",
                                     align=False)):
        model, closure = mlp_problem()
        opt = make(model)
        runs.append(([opt.step(closure) for _ in range(6)], weights(model), opt.forwards))
    assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2] == 12  # 2 forwards per step
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k
    assert METHODS["subzero"] is pgap.SubZero


def test_delta_schedule_is_linear_then_constant():
    model, _ = teacher_problem()
    opt = pgap.PGAP(model, lr=1e-3, delta=(2.0, 0.0), total_steps=100)
    assert [opt.delta_at(t) for t in (0, 25, 100, 150)] == pytest.approx([2.0, 1.5, 0.0, 0.0])
    assert pgap.PGAP(model, lr=1e-3, delta=(2.0, 0.0)).delta_at(50) == 2.0
    assert pgap.PGAP(model, lr=1e-3, delta=0.5, total_steps=10).delta_at(5) == 0.5


def test_window_refresh_and_forward_count():
    model, closure = teacher_problem()
    opt = pgap.PGAP(model, lr=1e-3, rank=2, probes=3, window=4)
    for _ in range(9):
        opt.step(closure)
    assert opt.forwards == 9 * 2 + 3 * (2 * 3)  # windows start at steps 0, 4, 8
    d = opt.diagnostics(per_matrix=True)
    assert d["window_start"] == 8 and set(d["s_norms"]) == {"weight"}
    assert d["rho_min"] <= d["rho_mean"] <= d["rho_max"] and d["delta"] == 2.0


@pytest.mark.parametrize("scale, lr", [("auto", 1e-2), ("none", 0.3)])
@pytest.mark.parametrize("mode", ["inplace", "functional"])
def test_pgap_reduces_loss_on_low_rank_teacher(mode, scale, lr):
    model, closure = teacher_problem(seed=1)
    # the default scale sqrt(m·n)/r learns at MeZO's lr (test_optimizers: 1e-2 here); with the
    # paper's scale="none" ||P||_F ~ r, so it needs a far larger lr (docs/pgap.md)
    opt = pgap.PGAP(model, lr=lr, eps=1e-3, rank=2, probes=10, window=20, mode=mode, scale=scale,
                    delta=(2.0, 0.0), total_steps=300, seed=0)
    first = loss_of(closure)
    for _ in range(300):
        opt.step(closure)
    opt.merge()
    assert loss_of(closure) < 0.7 * first


@pytest.mark.parametrize("scale, lr", [("auto", 3e-3), ("none", 0.2)])  # MeZO's lr: 3e-3
def test_pgap_reduces_loss_on_tiny_causal_lm(scale, lr):
    model, closure = tiny_llama()
    opt = pgap.PGAP(model, lr=lr, eps=1e-3, rank=4, probes=4, window=25, seed=0, scale=scale)
    first = loss_of(closure)
    losses = [opt.step(closure) for _ in range(150)]
    assert sum(losses[-20:]) / 20 < first - 0.05


@pytest.mark.parametrize("factory", [mlp_problem, tiny_llama], ids=["mlp", "tiny_llama"])
def test_inplace_and_functional_modes_agree(factory):
    runs = {}
    for mode in ("inplace", "functional"):
        model, closure = factory()
        # lr 1e-3 at the default scale sqrt(m·n)/r: weights move ~0.02 in 7 steps (at 3e-3 ~0.06,
        # as large as the weights, and g's float32 rounding then differs by ~1e-4 between modes)
        opt = pgap.PGAP(model, lr=1e-3, rank=3, probes=3, window=3, mode=mode, seed=8)
        losses = [opt.step(closure) for _ in range(7)]  # windows at 0, 3, 6: two merges
        if mode == "functional":
            assert all(st.functional for st in opt.matrices)
            name = opt.matrices[0].name  # not merged yet: W differs from the in-place run
            assert not torch.equal(weights(model)[name], runs["inplace"][2][name])
            assert loss_of(closure) == pytest.approx(losses[-1], rel=0.5)  # hooks active between steps
            opt.merge()
        runs[mode] = (losses, loss_of(closure), weights(model))
    (l_in, f_in, w_in), (l_fn, f_fn, w_fn) = runs["inplace"], runs["functional"]
    assert l_fn == pytest.approx(l_in, rel=1e-4)
    assert f_fn == pytest.approx(f_in, rel=1e-4)
    for k in w_in:
        torch.testing.assert_close(w_fn[k], w_in[k], **MODE_TOL, msg=k)


def test_functional_mode_never_writes_matrices_inside_a_window():
    model, closure = mlp_problem()
    opt = pgap.PGAP(model, lr=1e-2, rank=3, probes=2, window=10, mode="functional")
    opt.step(closure)
    after_first = weights(model)
    for _ in range(4):
        opt.step(closure)
    now = weights(model)
    for st in opt.matrices:
        assert torch.equal(now[st.name], after_first[st.name])
    assert not torch.equal(now["fc1.bias"], after_first["fc1.bias"])
    sd = model.state_dict()  # merges first
    assert not torch.equal(sd["fc1.weight"], after_first["fc1.weight"])
    assert all(not st.accumulated for st in opt.matrices)


def test_functional_mode_rejects_weight_decay_on_its_matrices():
    model, _ = mlp_problem()
    with pytest.raises(ValueError, match="weight_decay"):
        pgap.PGAP(model, lr=1e-3, mode="functional", weight_decay=0.1)


def test_close_merges_and_removes_hooks():
    model, closure = mlp_problem()
    opt = pgap.PGAP(model, lr=1e-2, rank=3, probes=2, window=10, mode="functional")
    for _ in range(3):
        opt.step(closure)
    before = loss_of(closure)
    opt.close()
    assert loss_of(closure) == pytest.approx(before, rel=1e-5)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("mode", ["inplace", "functional"])
def test_exact_resume_mid_window(tmp_path, mode):
    make = lambda m: pgap.PGAP(m, lr=1e-2, rank=3, probes=3, window=4, mode=mode, seed=6,  # noqa: E731
                               total_steps=10)
    run = resumed_run(make, mlp_problem, tmp_path, 5, 5)
    assert run["resumed"] == run["live"]
    for (k, a), b in zip(run["live_weights"].items(), run["resumed_weights"].values()):
        assert torch.equal(a, b), k


def test_same_seed_same_trajectory_bitwise():
    out = []
    for _ in range(2):
        model, closure = mlp_problem()
        opt = pgap.PGAP(model, lr=1e-2, rank=3, probes=3, window=3, seed=1)
        out.append(([opt.step(closure) for _ in range(5)], weights(model)))
    assert out[0][0] == out[1][0]
    for k in out[0][1]:
        assert torch.equal(out[0][1][k], out[1][1][k])


def test_every_backend_gives_the_reference_trajectory():
    def run(backend):
        model, closure = mlp_problem()
        opt = pgap.PGAP(model, lr=1e-2, rank=3, probes=2, window=2, seed=3, backend=backend)
        return [opt.step(closure) for _ in range(3)], weights(model)

    ref_losses, ref_w = run("reference")
    for backend in pk.available_backends("cpu"):
        losses, w = run(backend)
        assert losses == pytest.approx(ref_losses, rel=1e-4), backend
        for k in ref_w:
            torch.testing.assert_close(w[k], ref_w[k], **MODE_TOL, msg=f"{backend} {k}")


def test_gradient_alignment_reports_subspace_signal():
    model, closure = teacher_problem(seed=2)
    opt = pgap.PGAP(model, lr=1e-3, rank=2, probes=10, window=50)
    opt.step(closure)
    out = opt.gradient_alignment(closure)
    assert -1 <= out["cosine"] <= 1
    assert set(out["subspace_cosine"]) == {"weight"} and 0 <= out["captured"]["weight"] <= 1 + 1e-6
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, err, match", [
    ({"rank": 0}, ValueError, "rank"), ({"rank": 2.5}, TypeError, "rank"),
    ({"window": 0}, ValueError, "window"), ({"probes": 0}, ValueError, "probes"),
    ({"eps": 0.0}, ValueError, "eps"), ({"probe_eps": -1.0}, ValueError, "probe_eps"),
    ({"delta": -1.0}, ValueError, "delta"), ({"delta": (1.0, 2.0, 3.0)}, ValueError, "delta"),
    ({"total_steps": 0}, ValueError, "total_steps"), ({"xi": "per_layer"}, ValueError, "xi"),
    ({"subspace": "svd"}, ValueError, "subspace"), ({"scale": "mezo"}, ValueError, "scale"),
    ({"mode": "lazy"}, ValueError, "mode"), ({"align": "yes"}, TypeError, "align"),
    ({"svd_iters": -1}, ValueError, "svd_iters"),
])
def test_pgap_bad_arguments(kwargs, err, match):
    model, _ = teacher_problem()
    with pytest.raises(err, match=match):
        pgap.PGAP(model, **{"lr": 1e-3, **kwargs})
    with pytest.raises(TypeError):
        pgap.PGAP(model, lr=1e-3, unknown_option=1)


def test_non_finite_probe_loss_restores_weights():
    model, closure = mlp_problem()
    w0 = weights(model)
    opt = pgap.PGAP(model, lr=1e-3, rank=2, probes=3)
    with pytest.raises(pgap.NonFiniteLossError, match="probe"):
        opt.step(poisoned(closure, 3, float("inf")))
    for k, v in weights(model).items():
        torch.testing.assert_close(v, w0[k], **FP32_TOL)


@pytest.mark.parametrize("mode", ["inplace", "functional"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pgap_low_precision_weights(mode, dtype):
    model, closure = teacher_problem(seed=1, dtype=dtype)
    opt = pgap.PGAP(model, lr=1e-2, eps=1e-2, rank=2, probes=6, window=20, mode=mode, seed=0)
    first = loss_of(closure)
    for _ in range(300):
        opt.step(closure)
    opt.merge()
    assert model.weight.dtype == dtype and all(st.U.dtype == torch.float32 for st in opt.matrices)
    assert loss_of(closure) < 0.75 * first  # bf16 and fp16 reach 0.60 of the start here


def test_vector_lr_scale_zero_leaves_non_matrix_parameters_unchanged():
    model, closure = mlp_problem()
    w0 = weights(model)
    opt = pgap.PGAP(model, lr=0.5, rank=3, probes=2, window=10, vector_lr_scale=0.0)
    for _ in range(3):
        opt.step(closure)
    for k, v in weights(model).items():
        if v.dim() == 1:
            torch.testing.assert_close(v, w0[k], **FP32_TOL)
        else:
            assert not torch.equal(v, w0[k])
    with pytest.raises(ValueError, match="vector_lr_scale"):
        pgap.PGAP(model, lr=0.5, vector_lr_scale=-1.0)


def test_embedding_subclass_with_its_own_forward_stays_in_place():
    class Positions(torch.nn.Embedding):  # like OPT's learned positional embedding
        def forward(self, mask):
            return super().forward(torch.cumsum(mask, dim=1) - 1)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = Positions(8, 4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, mask):
            return self.head(self.pos(mask))

    torch.manual_seed(0)
    model = Model()
    mask = torch.ones(2, 5, dtype=torch.long)
    closure = lambda: (model(mask) ** 2).mean()  # noqa: E731
    opt = pgap.PGAP(model, lr=1e-2, rank=2, probes=2, window=2, mode="functional")
    state = {s.name: s.functional for s in opt.matrices}
    assert state == {"pos.weight": False, "head.weight": True}
    for _ in range(3):
        opt.step(closure)


# -- subspace="activation": V from the layer inputs, U = identity ---------------------------------
def test_activation_subspace_probe_matrix_and_alignment():
    X = torch.randn(128, 16, generator=torch.Generator().manual_seed(0)) @ torch.diag(
        torch.tensor([8.0, 4.0] + [0.05] * 14))
    model = torch.nn.Linear(16, 6)
    y = torch.randn(128, 6, generator=torch.Generator().manual_seed(1))
    closure = lambda: ((model(X) - y) ** 2).mean()  # noqa: E731
    h, eps, seed, delta = 4, 1e-3, 5, 1.0
    rec = Recorder(closure)
    opt = pgap.PGAP(model, lr=1e-3, eps=eps, rank=2, probes=h, window=10, seed=seed,
                    subspace="activation", delta=delta)
    opt.step(rec)
    assert opt.forwards == 2 * h + 2
    st = opt.matrices[0]
    assert st.U is None and st.V.shape == (16, 2) and st.S.shape == (6, 2) and st.Z.shape == (6, 2)
    # the basis found the two dominant input directions (coordinates 0 and 1)
    assert float(st.V[2:].norm()) < 0.05
    # S = (1/h) sum_j rho_j Xi_j V with the probes' full Gaussians Xi_j
    seeds = [derive_seed(seed, 0, PROBE_STREAM + j) for j in range(h)]
    rhos = [(rec.losses[2 * j] - rec.losses[2 * j + 1]) / (2 * eps) for j in range(h)]
    S = sum(r / h * pk.gaussian((6, 16), s, key=fnv1a32("weight")) for r, s in zip(rhos, seeds))
    torch.testing.assert_close(st.S, S @ st.V, rtol=1e-4, atol=1e-5)
    # the written direction is Z V^T with <S, Z> = xi sqrt(delta) ||S||
    P = opt.last_direction()["weight"]
    torch.testing.assert_close(P, st.Z @ st.V.T, **FP32_TOL)
    sign = random_sign(opt.step_seed(0), fnv1a32("weight"))
    inner = float((st.Z * st.S).sum())
    assert inner == pytest.approx(sign * math.sqrt(delta) * float(st.S.norm()), rel=1e-4)


@pytest.mark.parametrize("factory", [mlp_problem, tiny_llama], ids=["mlp", "tied-llama"])
def test_activation_subspace_inplace_and_functional_agree(factory):
    runs = []
    for mode in ("inplace", "functional"):
        model, closure = factory(seed=1)
        opt = pgap.PGAP(model, lr=1e-2, rank=2, window=3, probes=2, subspace="activation",
                        mode=mode, seed=2)
        losses = [opt.step(closure) for _ in range(7)]
        opt.merge()
        runs.append((losses, weights(model)))
    torch.testing.assert_close(torch.tensor(runs[1][0]), torch.tensor(runs[0][0]), **MODE_TOL)
    for k in runs[0][1]:
        torch.testing.assert_close(runs[1][1][k], runs[0][1][k], **MODE_TOL, msg=k)


def test_activation_subspace_exact_resume(tmp_path):
    make = lambda m: pgap.PGAP(m, lr=1e-2, rank=2, probes=2, window=3, seed=6,  # noqa: E731
                               subspace="activation")
    run = resumed_run(make, mlp_problem, tmp_path, 4, 4)
    assert run["resumed"] == run["live"]


def test_activation_subspace_needs_scale_none():
    model, _ = mlp_problem()
    with pytest.raises(ValueError, match="scale"):
        pgap.PGAP(model, lr=1e-3, subspace="activation", scale="subzero")
