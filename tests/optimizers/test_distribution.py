"""distribution="rademacher" on the MeZO family: z is the stream's ±1 signs (docs/rng.md), in
place and in functional mode, for the two-point pair, the update and the probes."""
import pytest
import torch

import pgap
import pgap_kernels as pk
from pgap.seeds import derive_seed, fnv1a32
from zo_problems import loss_along, loss_of, mlp_problem, teacher_problem, weights

FP32_TOL = dict(rtol=1e-6, atol=1e-6)


def test_mezo_update_is_along_the_rademacher_signs():
    model, closure = mlp_problem()
    w0 = weights(model)
    lr, eps, seed = 1e-2, 1e-3, 7
    opt = pgap.MeZO(model, lr=lr, eps=eps, seed=seed, distribution="rademacher")
    opt.step(closure)
    s = derive_seed(seed, 0)
    z = {k: pk.rademacher(tuple(v.shape), s, key=fnv1a32(k)) for k, v in w0.items()}

    w1 = weights(model)
    d = opt.diagnostics()
    assert d["loss_plus"] == pytest.approx(loss_along(model, closure, w0, z, eps), rel=1e-5)
    assert d["loss_minus"] == pytest.approx(loss_along(model, closure, w0, z, -eps), rel=1e-5)
    for k in w0:
        assert set(z[k].unique().tolist()) <= {-1.0, 1.0}
        torch.testing.assert_close(w1[k], w0[k] - lr * d["projected_grad"] * z[k], **FP32_TOL)
    last = opt.last_direction()
    for k in w0:
        torch.testing.assert_close(last[k], z[k], rtol=0, atol=0)


@pytest.mark.parametrize("dtype,mode", [(torch.float32, "inplace"), (torch.float32, "functional"),
                                        (torch.bfloat16, "functional")])
def test_mezo_with_rademacher_directions_learns(dtype, mode):
    model, closure = teacher_problem(seed=1, dtype=dtype)
    opt = pgap.MeZO(model, lr=1e-2, eps=1e-2, seed=0, mode=mode, distribution="rademacher")
    first = loss_of(closure)
    for _ in range(400):
        opt.step(closure)
    assert loss_of(closure) < 0.5 * first  # Gaussian z: 0.30-0.37 over seeds 0-2; Rademacher 0.35-0.41


def test_functional_forwards_see_what_in_place_writes():
    """Same seed, float32: the functional mode's +ε forward sees the in-place mode's θ + ε·z."""
    seen = {}
    for mode in ("inplace", "functional"):
        model, closure = mlp_problem()
        opt = pgap.MeZO(model, lr=1e-2, eps=1e-3, seed=3, mode=mode, distribution="rademacher")
        opt.step(closure)
        seen[mode] = opt.diagnostics()["loss_plus"]
    assert seen["inplace"] == pytest.approx(seen["functional"], rel=1e-6)


@pytest.mark.parametrize("cls", [pgap.MeZOGV, pgap.MeZOGreedy])
def test_probing_methods_draw_their_probes_from_the_rademacher_stream(cls):
    model, closure = mlp_problem()
    opt = cls(model, lr=1e-2, eps=1e-3, seed=2, distribution="rademacher")
    opt.step(closure)
    assert opt.hyperparameters()["distribution"] == "rademacher"
    direction = opt.last_direction()["fc1.weight"]
    # a combination of ±1 vectors: MeZO-Greedy's is one of them, MeZO-GV's a weighted sum
    if cls is pgap.MeZOGreedy:
        assert set(direction.unique().tolist()) <= {-1.0, 1.0}
    else:
        assert direction.unique().numel() <= 2 ** opt.num_probes


def test_bad_distribution_is_refused_before_anything_changes():
    model, closure = mlp_problem()
    w0 = weights(model)
    with pytest.raises(ValueError, match="distribution"):
        pgap.MeZO(model, lr=1e-2, distribution="uniform")
    with pytest.raises(TypeError):
        pgap.LDSD(model, lr=1e-2, distribution="rademacher")  # Gaussian by construction
    for k, v in weights(model).items():
        assert torch.equal(v, w0[k])


def test_a_checkpoint_records_the_distribution(recwarn):
    model, closure = mlp_problem()
    opt = pgap.MeZO(model, lr=1e-2, seed=1, distribution="rademacher")
    opt.step(closure)
    state = opt.state_dict()
    other = pgap.MeZO(mlp_problem()[0], lr=1e-2, seed=1)
    with pytest.warns(UserWarning, match="distribution"):
        other.load_state_dict(state)
