"""randomized_svd on dense and implicit matrices; aligned_perturbation."""
import math

import pytest
import torch

import pgap_kernels as pk


def with_spectrum(m, n, sigma, seed=0, dtype=torch.float64):
    """A matrix U diag(sigma) V^T with random orthonormal U (m x k), V (n x k)."""
    g = torch.Generator().manual_seed(seed)
    k = len(sigma)
    u = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    return (u * torch.as_tensor(sigma, dtype=torch.float64)) @ v.T, u, v


def max_principal_angle_sin(a, b):
    """sin of the largest principal angle between the column spaces of a and b (orthonormal)."""
    s = torch.linalg.svdvals(a.double().T @ b.double())
    return math.sqrt(max(0.0, 1.0 - float(s.min()) ** 2))


def check_factors(u, s, v, m, n, rank, tol=1e-5):
    assert u.shape == (m, rank) and s.shape == (rank,) and v.shape == (n, rank)
    eye = torch.eye(rank, dtype=u.dtype)
    torch.testing.assert_close(u.T @ u, eye, rtol=0, atol=tol)
    torch.testing.assert_close(v.T @ v, eye, rtol=0, atol=tol)
    assert bool((s[:-1] >= s[1:]).all()) and bool((s >= 0).all())
    # sign convention: the largest-magnitude entry of every column of U is positive
    top = u.gather(0, u.abs().argmax(dim=0, keepdim=True))
    assert bool((top > 0).all())


@pytest.mark.parametrize("m,n", [(300, 200), (120, 500)])
def test_recovers_top_subspace_of_known_spectrum(m, n):
    rank = 10
    sigma = [100.0 * 0.7 ** i for i in range(rank)] + [0.05 * 0.99 ** i for i in range(min(m, n) - rank)]
    a, u_true, v_true = with_spectrum(m, n, sigma)
    u, s, v = pk.randomized_svd(a.float(), rank, n_iter=2, seed=3)
    check_factors(u, s, v, m, n, rank)
    torch.testing.assert_close(s.double(), torch.tensor(sigma[:rank], dtype=torch.float64), rtol=1e-4, atol=1e-3)
    # Wedin: sin(theta) <= sigma_{r+1} / (sigma_r - sigma_{r+1}) (about 0.0126 here)
    wedin = sigma[rank] / (sigma[rank - 1] - sigma[rank])
    assert max_principal_angle_sin(u, u_true[:, :rank]) < wedin
    assert max_principal_angle_sin(v, v_true[:, :rank]) < wedin


def test_exactly_low_rank_matches_full_svd():
    a, _, _ = with_spectrum(80, 60, [9.0, 5.0, 2.0, 1.0, 0.5])
    a = a.float()
    u, s, v = pk.randomized_svd(a, 5, oversample=5, n_iter=1)
    uf, sf, vhf = torch.linalg.svd(a, full_matrices=False)
    torch.testing.assert_close(s, sf[:5], rtol=1e-5, atol=1e-5)
    # same singular vectors up to the sign convention
    signs = torch.sign((u * uf[:, :5]).sum(0))
    torch.testing.assert_close(u, uf[:, :5] * signs, rtol=0, atol=1e-4)
    torch.testing.assert_close(v, vhf[:5].T * signs, rtol=0, atol=1e-4)
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, a, rtol=0, atol=1e-4)


def test_batched_dense_equals_one_by_one_and_is_deterministic():
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(2, 3, 40, 30, generator=g)
    u, s, v = pk.randomized_svd(batch, 4, seed=11)
    assert u.shape == (2, 3, 40, 4) and s.shape == (2, 3, 4) and v.shape == (2, 3, 30, 4)
    for i in range(2):
        for j in range(3):
            ui, si, vi = pk.randomized_svd(batch[i, j], 4, seed=11)
            torch.testing.assert_close(ui, u[i, j], rtol=0, atol=1e-5)
            torch.testing.assert_close(si, s[i, j], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(vi, v[i, j], rtol=0, atol=1e-5)
    again = pk.randomized_svd(batch, 4, seed=11)
    assert all(torch.equal(x, y) for x, y in zip(again, (u, s, v)))


def test_implicit_gaussian_sum_equals_dense_on_materialized():
    """Same seed => same test matrix: implicit and dense paths agree to float32 rounding."""
    g = pk.GaussianSum(96, 64, [5, 6, 7], [0.2, -0.4, 0.1], key=9, offset=13)
    u, s, v = pk.randomized_svd(g, 6, n_iter=2, seed=4)
    ud, sd, vd = pk.randomized_svd(g.materialize(), 6, n_iter=2, seed=4)
    check_factors(u, s, v, 96, 64, 6)
    torch.testing.assert_close(s, sd, rtol=1e-4, atol=1e-4)
    assert max_principal_angle_sin(u, ud) < 1e-2
    gt = pk.randomized_svd(g.T, 6, n_iter=2, seed=4)
    gdt = pk.randomized_svd(g.materialize().T, 6, n_iter=2, seed=4)
    torch.testing.assert_close(gt[1], gdt[1], rtol=1e-4, atol=1e-4)


def test_list_of_mixed_operands():
    g1 = pk.GaussianSum(30, 20, [1, 2], [1.0, 0.5], key=1)
    g2 = pk.GaussianSum(30, 20, [1, 2], [1.0, 0.5], key=2)
    g3 = pk.GaussianSum(20, 30, [1], [1.0], key=3)
    d = torch.randn(25, 35)
    results = pk.randomized_svd([g1, d, g2, g3], 3, seed=2)
    assert len(results) == 4
    for op, (u, s, v) in zip([g1, d, g2, g3], results):
        single = pk.randomized_svd(op, 3, seed=2)
        torch.testing.assert_close(s, single[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(u, single[0], rtol=0, atol=1e-4)
        check_factors(u, s, v, op.shape[0], op.shape[1], 3)


def test_rank_equal_to_min_dimension_and_float64():
    a = torch.randn(12, 7, dtype=torch.float64)
    u, s, v = pk.randomized_svd(a, 7, n_iter=0)
    assert u.dtype == torch.float64
    torch.testing.assert_close(s, torch.linalg.svdvals(a), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"rank": 0}, ValueError, "rank"),
    ({"rank": 9}, ValueError, "exceeds"),
    ({"rank": 2, "oversample": -1}, ValueError, "oversample"),
    ({"rank": 2, "n_iter": 1.5}, TypeError, "n_iter"),
    ({"rank": 2, "seed": -1}, ValueError, "seed"),
])
def test_rsvd_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pk.randomized_svd(torch.randn(8, 10), **kwargs)


def test_rsvd_bad_operands():
    with pytest.raises(TypeError, match="A"):
        pk.randomized_svd("matrix", 2)
    with pytest.raises(TypeError, match="dtype"):
        pk.randomized_svd(torch.ones(4, 4, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="2 dims"):
        pk.randomized_svd(torch.ones(4), 1)
    with pytest.raises(ValueError, match=r"exceeds.*A\[1\]"):
        pk.randomized_svd([torch.ones(4, 4), pk.GaussianSum(2, 9, 1, 1.0)], 3)


# ----------------------------------------------------------------------------------------------
# aligned_perturbation
# ----------------------------------------------------------------------------------------------
def test_operator_form_equals_randomized_svd_of_the_matrix():
    """randomized_svd_operator (products only, as the sharded P-GAP path uses it) returns the
    factors of randomized_svd on the same matrices, batched."""
    a = torch.stack([with_spectrum(40, 30, [5.0, 3.0, 1.0, 0.5], seed=s)[0].float() for s in (1, 2)])
    u, s, v = pk.randomized_svd_operator(lambda x: a @ x, lambda y: a.mT @ y, 40, 30, 3, batch=2,
                                         oversample=4, n_iter=1, seed=9)
    for b in range(2):
        ub, sb, vb = pk.randomized_svd(a[b], 3, oversample=4, n_iter=1, seed=9)
        torch.testing.assert_close(u[b], ub, rtol=0, atol=1e-6)
        torch.testing.assert_close(s[b], sb, rtol=0, atol=1e-6)
        torch.testing.assert_close(v[b], vb, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="rank 31 exceeds"):
        pk.randomized_svd_operator(lambda x: x, lambda y: y, 40, 30, 31)
    with pytest.raises(TypeError, match="callables"):
        pk.randomized_svd_operator(None, None, 40, 30, 3)


def test_alignment_condition_and_orthogonal_part():
    g = torch.Generator().manual_seed(0)
    z0, s = torch.randn(5, 8, 8, generator=g), torch.randn(5, 8, 8, generator=g)
    xi = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    for delta in (2.0, 0.5, 0.0):
        z = pk.aligned_perturbation(z0, s, xi, delta)
        norm = s.norm(dim=(-2, -1))
        torch.testing.assert_close((z * s).sum((-2, -1)), xi * math.sqrt(delta) * norm, rtol=1e-5, atol=1e-5)
        # the part orthogonal to S is Z0's
        unit = s / norm[:, None, None]
        perp = lambda x: x - (x * unit).sum((-2, -1), keepdim=True) * unit  # noqa: E731
        torch.testing.assert_close(perp(z), perp(z0), rtol=1e-5, atol=1e-5)


def test_alignment_formula_float64_and_broadcast():
    z0 = torch.randn(3, 4, 6, dtype=torch.float64)
    s = torch.randn(4, 6, dtype=torch.float64)
    z = pk.aligned_perturbation(z0, s, -1.0, 2.0)
    nrm = s.norm()
    expect = z0 - (((s * z0).sum((-2, -1)) + math.sqrt(2.0) * nrm) / nrm ** 2)[:, None, None] * s
    torch.testing.assert_close(z, expect, rtol=1e-12, atol=1e-12)
    assert z.dtype == torch.float64


def test_alignment_is_scale_invariant_and_stable():
    z0, s = torch.randn(6, 6), torch.randn(6, 6)
    base = pk.aligned_perturbation(z0, s, 1.0, 1.0)
    for factor in (1e-30, 1e30):
        torch.testing.assert_close(pk.aligned_perturbation(z0, s * factor, 1.0, 1.0), base, rtol=1e-5, atol=1e-5)
    assert pk.aligned_perturbation(z0.bfloat16(), s, 1.0, 1.0).dtype == torch.bfloat16


def test_alignment_fallback_when_s_is_zero_or_not_finite():
    z0 = torch.randn(4, 3, 3)
    s = torch.randn(4, 3, 3)
    s[1] = 0.0
    s[2, 0, 0] = float("nan")
    s[3, 1, 1] = float("inf")
    z = pk.aligned_perturbation(z0, s, 1.0, 2.0)
    assert torch.equal(z[1:], z0[1:])
    assert not torch.equal(z[0], z0[0])


def test_alignment_bad_arguments():
    z0 = torch.randn(3, 3)
    with pytest.raises(ValueError, match="delta"):
        pk.aligned_perturbation(z0, z0, 1.0, -1.0)
    with pytest.raises(ValueError, match="xi"):
        pk.aligned_perturbation(z0, z0, float("nan"), 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        pk.aligned_perturbation(z0, torch.randn(4, 4), 1.0, 1.0)
    with pytest.raises(TypeError, match="Z0"):
        pk.aligned_perturbation(z0.int(), z0, 1.0, 1.0)
    with pytest.raises(ValueError, match="2 dims"):
        pk.aligned_perturbation(torch.randn(3), torch.randn(3), 1.0, 1.0)


def test_pgap_perturbation_satisfies_alignment_in_full_space():
    """P = U Z V^T written by lowrank_perturb_ satisfies <P, U S_r V^T>_F = xi sqrt(delta) ||S_r||_F."""
    probe = pk.GaussianSum(64, 48, [1, 2, 3, 4], [0.3, -0.2, 0.5, 0.1], key=17)
    u, sigma, v = pk.randomized_svd(probe, 8, seed=1)
    s_r = torch.diag(sigma)
    z0 = pk.gaussian((8, 8), 99, key=3)
    z = pk.aligned_perturbation(z0, s_r, -1.0, 2.0)
    p = torch.zeros(64, 48)
    pk.lowrank_perturb_(p, u, z, v, 1.0)
    inner = float((p.double() * (u @ s_r @ v.T).double()).sum())
    assert inner == pytest.approx(-math.sqrt(2.0) * float(sigma.norm()), rel=1e-4)
