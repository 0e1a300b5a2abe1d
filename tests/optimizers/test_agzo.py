"""AGZO: activation bases (hooks, refresh, token mask), the update formula, state and errors."""
import pytest
import torch
from torch import nn

import pgap
import pgap_kernels as pk
from pgap.seeds import derive_seed, fnv1a32
from zo_problems import mlp_problem, resumed_run, teacher_problem, tiny_llama, weights

FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}


def low_rank_inputs(n_rows=256, n=16, true_rank=3, noise=1e-3, seed=0):
    """Inputs X = A·Bᵀ (+ tiny noise) whose rows span the columns of B (n × true_rank)."""
    g = torch.Generator().manual_seed(seed)
    B = torch.linalg.qr(torch.randn(n, true_rank, generator=g)).Q
    X = torch.randn(n_rows, true_rank, generator=g) * torch.tensor([10.0, 6.0, 3.0][:true_rank])
    return X @ B.T + noise * torch.randn(n_rows, n, generator=g), B


def outside(V: torch.Tensor, B: torch.Tensor) -> float:
    """‖(I − V Vᵀ) B‖: how much of span(B) V misses (0 when V spans B)."""
    return float((B - V @ (V.T @ B)).norm())


def test_basis_recovers_the_input_subspace():
    X, B = low_rank_inputs()
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))
    y = torch.randn(256, 1)
    opt = pgap.AGZO(model, lr=0.0, rank=3, refresh=0)
    opt.step(lambda: ((model(X) - y) ** 2).mean())
    first = opt.bases[0]
    assert first.name == "0.weight" and first.V.shape == (16, 3)
    torch.testing.assert_close(first.V.T @ first.V, torch.eye(3), atol=1e-5, rtol=0)
    assert outside(first.V, B) < 1e-3
    assert first.sigma[0] > first.sigma[2] > 10 * first.sigma[3]  # three dominant directions


def test_refresh_sketches_the_plus_forward_and_counts_no_extra_forward():
    X, B = low_rank_inputs(seed=1)
    X2, B2 = low_rank_inputs(seed=2)
    model = nn.Linear(16, 4)
    data = {"x": X}
    opt = pgap.AGZO(model, lr=0.0, rank=3, refresh=3, first_iters=0)
    closure = lambda: model(data["x"]).pow(2).mean()  # noqa: E731
    opt.step(closure)                       # step 0: basis forward + 2
    assert opt.forwards == 3 and outside(opt.bases[0].V, B) < 1e-3
    data["x"] = X2
    opt.step(closure)                       # steps 1, 2: no refresh, old basis kept
    opt.step(closure)
    assert opt.forwards == 7 and outside(opt.bases[0].V, B) < 1e-3
    for _ in range(4):                      # steps 3 and 6 refresh from their +eps forwards
        opt.step(closure)                   # (warm start from B: two refreshes to reach B2)
    assert opt.forwards == 15
    assert outside(opt.bases[0].V, B2) < 0.05
    assert opt.diagnostics()["refresh_step"] == 6


def test_first_iters_refine_the_first_basis_in_the_next_steps():
    X, B = low_rank_inputs(n_rows=256, n=16, true_rank=3, noise=0.3, seed=4)
    model = nn.Linear(16, 2)
    closure = lambda: model(X).pow(2).mean()  # noqa: E731
    refined = pgap.AGZO(model, lr=0.0, rank=3, oversample=0, refresh=0, first_iters=3)
    steps = []
    for _ in range(5):
        refined.step(closure)
        steps.append(refined.diagnostics()["refresh_step"])
    assert steps == [0, 1, 2, 3, 3] and refined.forwards == 11
    once = pgap.AGZO(model, lr=0.0, rank=3, oversample=0, refresh=0, first_iters=0)
    once.step(closure)
    assert outside(refined.bases[0].V, B) < outside(once.bases[0].V, B)


def test_update_equals_the_formula_from_materialized_xi():
    model, closure = mlp_problem(seed=3)
    lr, eps, seed = 1e-2, 1e-3, 11
    opt = pgap.AGZO(model, lr=lr, eps=eps, rank=4, refresh=0, seed=seed)
    before = weights(model)
    opt.step(closure)
    g = opt.diagnostics()["projected_grad"]
    step_seed = derive_seed(seed, 0)
    assert {b.name for b in opt.bases} == {"fc1.weight", "fc2.weight"}
    for name, p in model.named_parameters():
        basis = next((b for b in opt.bases if b.name == name), None)
        if basis is not None:
            xi = pk.gaussian((p.shape[0], basis.rank), step_seed, key=fnv1a32(name))
            direction = xi @ basis.V.T
        else:  # embedding, biases, norm: MeZO's Gaussians
            direction = pk.gaussian(tuple(p.shape), step_seed, key=fnv1a32(name))
        torch.testing.assert_close(p.detach(), before[name] - lr * g * direction, **FP32_TOL,
                                   msg=name)


def test_frozen_others_and_weight_decay():
    model, closure = mlp_problem(seed=4)
    before = weights(model)
    opt = pgap.AGZO(model, lr=1e-2, rank=2, others="frozen", weight_decay=0.5)
    for _ in range(3):
        opt.step(closure)
    after = weights(model)
    for name in ("embed.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.bias"):
        torch.testing.assert_close(after[name], before[name], atol=1e-6, rtol=0, msg=name)
    assert not torch.allclose(after["fc1.weight"], before["fc1.weight"])


def test_tied_lm_head_gets_a_basis_from_the_head_inputs():
    pytest.importorskip("transformers")
    model, closure = tiny_llama(tie=True)
    opt = pgap.AGZO(model, lr=1e-3, rank=4)
    names = {b.name for b in opt.bases}
    assert "model.embed_tokens.weight" in names  # the tied weight, through lm_head's inputs
    tied = next(b for b in opt.bases if b.name == "model.embed_tokens.weight")
    assert tied.modules == [model.lm_head] and tied.V is None
    loss0 = float(closure().detach())
    for _ in range(20):
        opt.step(closure)
    assert tied.V.shape == (32, 4)
    assert float(closure().detach()) < loss0


def test_token_mask_keeps_padding_out_of_the_basis():
    X, B = low_rank_inputs(n_rows=64, seed=5)
    batch = X.reshape(4, 16, 16).clone()
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[:, 12:] = 0
    junk = torch.zeros(16)
    junk[0] = 1.0
    junk = junk - B @ (B.T @ junk)
    batch[:, 12:] = 500.0 * junk / junk.norm()  # padded positions: huge, outside span(B)
    model = nn.Linear(16, 2)
    closure = lambda: model(batch).pow(2).mean()  # noqa: E731
    masked = pgap.AGZO(model, lr=0.0, rank=3, refresh=0)
    masked.set_token_mask(mask)
    masked.step(closure)
    assert outside(masked.bases[0].V, B) < 1e-2
    masked.close()
    plain = pgap.AGZO(model, lr=0.0, rank=3, refresh=0)
    plain.step(closure)
    assert outside(plain.bases[0].V, B) > 0.5  # the padding direction took a basis slot
    with pytest.raises(ValueError, match="token_mask"):
        plain.set_token_mask(torch.ones(4))


def test_sigma_power_scales_directions_to_mean_square_one():
    X, _ = low_rank_inputs(seed=6)
    model = nn.Linear(16, 3)
    opt = pgap.AGZO(model, lr=0.0, rank=4, refresh=0, sigma_power=0.5)
    opt.step(lambda: model(X).pow(2).mean())
    b = opt.bases[0]
    B = opt._scaled(b)
    w = B.norm(dim=0)
    torch.testing.assert_close(w.square().mean(), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert bool((w[1:] >= w[:-1] - 1e-6).all())  # weaker directions get larger steps


def test_reduces_loss_when_inputs_are_low_rank():
    X, _ = low_rank_inputs(seed=3)
    T = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    Y = X @ T.T
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    closure = lambda: ((model(X) - Y) ** 2).mean().detach()  # noqa: E731
    opt = pgap.AGZO(model, lr=1e-3, rank=3, seed=0)
    start = float(closure())
    for _ in range(100):
        opt.step(closure)
    assert float(closure()) < 0.1 * start


def test_exact_resume_across_a_refresh(tmp_path):
    make = lambda m: pgap.AGZO(m, lr=1e-2, rank=3, refresh=3, seed=5, sigma_power=0.25)  # noqa: E731
    run = resumed_run(make, lambda: mlp_problem(seed=7), tmp_path, 4, 5)
    assert run["loaded_forwards"] == 9
    assert run["resumed"] == run["live"]
    for (k, a), b in zip(run["live_weights"].items(), run["resumed_weights"].values()):
        assert torch.equal(a, b), k


def test_every_backend_gives_the_reference_trajectory():
    def run(backend):
        model, closure = mlp_problem(seed=8)
        opt = pgap.AGZO(model, lr=1e-2, rank=3, refresh=2, seed=3, backend=backend)
        return [opt.step(closure) for _ in range(4)], weights(model)

    ref_losses, ref_w = run("reference")
    for backend in pk.available_backends("cpu"):
        losses, w = run(backend)
        assert losses == pytest.approx(ref_losses, rel=1e-4), backend
        for k in ref_w:
            torch.testing.assert_close(w[k], ref_w[k], rtol=1e-4, atol=5e-5, msg=f"{backend} {k}")


def test_gradient_alignment_reports_captured_fraction():
    X, _ = low_rank_inputs(seed=9)
    model = nn.Linear(16, 4)
    y = torch.randn(256, 4)
    closure = lambda: ((model(X) - y) ** 2).mean()  # noqa: E731
    opt = pgap.AGZO(model, lr=1e-3, rank=3, refresh=0)
    opt.step(closure)
    out = opt.gradient_alignment(closure)
    assert out["captured"]["weight"] > 0.99  # the gradient's rows lie in the inputs' span
    assert all(p.grad is None for p in model.parameters())


def test_available_by_name():
    model, _ = mlp_problem()
    from pgap.methods import build_optimizer
    assert isinstance(build_optimizer("agzo", model, lr=1e-3, eps=1e-3, seed=0, rank=2), pgap.AGZO)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"rank": 0}, ValueError, "rank"), ({"rank": 1.5}, TypeError, "rank"),
    ({"refresh": -1}, ValueError, "refresh"), ({"oversample": -1}, ValueError, "oversample"),
    ({"first_iters": -1}, ValueError, "first_iters"), ({"others": "lora"}, ValueError, "others"),
    ({"sigma_power": -0.5}, ValueError, "sigma_power"), ({"eps": 0.0}, ValueError, "eps"),
])
def test_bad_arguments(kwargs, err, match):
    model, _ = mlp_problem()
    args = dict({"lr": 1e-3}, **kwargs)
    with pytest.raises(err, match=match):
        pgap.AGZO(model, **args)


# inplace vs functional: W + (A + cΞ)Bᵀ evaluated in another order; the losses agree to float32
# rounding amplified by 1/(2ε) in g (as in tests/optimizers/test_pgap.py)
MODE_TOL = {"rtol": 1e-4, "atol": 5e-5}


@pytest.mark.parametrize("factory", [mlp_problem, tiny_llama], ids=["mlp", "tied-llama"])
def test_inplace_and_functional_modes_agree(factory):
    if factory is tiny_llama:
        pytest.importorskip("transformers")
    runs = []
    for mode in ("inplace", "functional"):
        model, closure = factory(seed=2)
        opt = pgap.AGZO(model, lr=1e-2, eps=1e-2, rank=3, refresh=3, mode=mode, seed=4)
        losses = [opt.step(closure) for _ in range(7)]
        opt.merge()
        runs.append((losses, weights(model)))
    torch.testing.assert_close(torch.tensor(runs[1][0]), torch.tensor(runs[0][0]), **MODE_TOL)
    for k in runs[0][1]:
        torch.testing.assert_close(runs[1][1][k], runs[0][1][k], **MODE_TOL, msg=k)


def test_functional_mode_writes_matrices_only_at_refreshes():
    model, closure = mlp_problem(seed=5)
    opt = pgap.AGZO(model, lr=1e-2, rank=3, refresh=4, first_iters=0, mode="functional")
    opt.step(closure)
    w0 = model.fc1.weight.detach().clone()
    for _ in range(3):                       # steps 1-3: no refresh, fc1 untouched
        opt.step(closure)
        assert torch.equal(model.fc1.weight, w0)
    opt.step(closure)                        # step 4 merges before it refreshes
    assert not torch.equal(model.fc1.weight, w0)
    sd = model.state_dict()                  # the model's state_dict merges pending updates too
    assert all(not side.accumulated for side in opt._sides.values()) and "fc1.weight" in sd


def test_functional_close_merges_and_removes_hooks():
    model, closure = mlp_problem(seed=6)
    opt = pgap.AGZO(model, lr=1e-2, rank=2, refresh=0, mode="functional")
    for _ in range(3):
        opt.step(closure)
    loss_with_side = float(closure().detach())
    opt.close()
    assert float(closure().detach()) == pytest.approx(loss_with_side, rel=1e-5)
    assert not model.fc1._forward_hooks and not model.fc1._forward_pre_hooks


def test_functional_exact_resume(tmp_path):
    make = lambda m: pgap.AGZO(m, lr=1e-2, rank=3, refresh=3, seed=5, mode="functional")  # noqa: E731
    run = resumed_run(make, lambda: mlp_problem(seed=7), tmp_path, 4, 5)
    assert run["resumed"] == run["live"]
    for (k, a), b in zip(run["live_weights"].items(), run["resumed_weights"].values()):
        assert torch.equal(a, b), k


def test_functional_mode_rejects_weight_decay_on_its_matrices():
    model, _ = mlp_problem()
    with pytest.raises(ValueError, match="functional"):
        pgap.AGZO(model, lr=1e-3, mode="functional", weight_decay=0.1)
    with pytest.raises(ValueError, match="mode"):
        pgap.AGZO(model, lr=1e-3, mode="lazy")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_side_term_added_inside_the_gemm_equals_the_added_product(dtype, tol, contiguous):
    from pgap.side_paths import add_product_
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 7, generator=g).to(dtype)
    if not contiguous:
        out = torch.randn(3, 7, 5, generator=g).to(dtype).transpose(1, 2)
    left, right = torch.randn(3, 5, 4, generator=g).to(dtype), torch.randn(4, 7, generator=g).to(dtype)
    want = out.float() + left.float() @ right.float()
    before = out.data_ptr()
    add_product_(out, left, right)
    assert out.data_ptr() == before and out.dtype == dtype  # in place
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol * 4)
