"""lowrank_perturb_ and gaussian_sketch: every backend against reference, reference against
float64 ground truth, the sketch against the matrix perturb_ writes, lists, edge cases."""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels.testing import ULP, assert_lowrank_close, assert_sketch_close

from conftest import is_triton_interpreter

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def factors(m, n, r, s, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    u, z, v = (torch.randn(*shape, generator=g) / shape[-1] ** 0.5 for shape in ((m, r), (r, s), (n, s)))
    return u.to(device), z.to(device), v.to(device)


def magnitude(u, z, v, scale):
    """Largest entry of |scale*U@Z| @ |V|^T (bounds the float32 accumulation)."""
    return float(((scale * u.double().cpu() @ z.double().cpu()).abs() @ v.double().cpu().abs().T).max())


def run_lowrank(backend, weights, us, zs, vs, scale, **kwargs):
    out = [w.clone() for w in weights]
    with pk.use_backend(backend):
        pk.lowrank_perturb_(out, us, zs, vs, scale, **kwargs)
    return out


def small(device, backend):
    return is_triton_interpreter(device, backend)


# ----------------------------------------------------------------------------------------------
# reference = the definition
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [1.0, 0.9, 0.0])
def test_reference_matches_float64(dtype, decay):
    m, n, r, s = 257, 129, 7, 5
    u, z, v = factors(m, n, r, s)
    w = torch.randn(m, n).to(dtype)
    exact = decay * w.double() + 0.3 * (u.double() @ z.double() @ v.double().T)
    out = run_lowrank("reference", [w], [u], [z], [v], 0.3, decay=decay)[0]
    # one rounding of the float32 result: within an ulp of the exact value (plus fp32 error)
    torch.testing.assert_close(out.double(), exact.to(dtype).double(), rtol=ULP[dtype], atol=1e-5)


def test_reference_never_allocates_m_by_n_in_one_piece():
    """The reference works tile by tile: each temporary is at most ~1 MiB of float32."""
    from pgap_kernels.backends.reference.lowrank import TILE_ELEMENTS, rows_per_tile
    assert rows_per_tile(4096) * 4096 <= TILE_ELEMENTS
    assert rows_per_tile(10 ** 7) == 1


# ----------------------------------------------------------------------------------------------
# parity of every backend with reference
# ----------------------------------------------------------------------------------------------
SHAPES = [(1, 1, 1, 1), (3, 5, 2, 3), (257, 129, 16, 16), (1000, 3000, 64, 8), (65, 33, 1, 64)]
TINY_SHAPES = [(1, 1, 1, 1), (3, 5, 2, 3), (17, 33, 16, 5), (20, 9, 1, 33)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_lowrank_parity_shapes(device_backend, dtype):
    device, backend = device_backend
    shapes = TINY_SHAPES if small(device, backend) else SHAPES
    for i, (m, n, r, s) in enumerate(shapes):
        u, z, v = factors(m, n, r, s, seed=i, device=device)
        w = torch.randn(m, n, generator=torch.Generator().manual_seed(i)).to(dtype).to(device)
        for decay in (1.0, 0.97):
            exp = run_lowrank("reference", [w], [u], [z], [v], 0.5, decay=decay)[0]
            got = run_lowrank(backend, [w], [u], [z], [v], 0.5, decay=decay)[0]
            assert got.device.type == device
            assert_lowrank_close(got, exp, magnitude(u, z, v, 0.5))


@pytest.mark.parametrize("rank", [1, 2, 3, 8, 33, 64, 256])
def test_lowrank_parity_ranks(device_backend, rank):
    device, backend = device_backend
    if small(device, backend) and rank > 33:
        pytest.skip("large ranks are too slow under the Triton interpreter")
    m, n = (9, 19) if small(device, backend) else (300, 257)
    u, z, v = factors(m, n, rank, max(1, rank // 2), seed=rank, device=device)
    w = torch.randn(m, n).to(device)
    exp = run_lowrank("reference", [w], [u], [z], [v], -1.5)[0]
    got = run_lowrank(backend, [w], [u], [z], [v], -1.5)[0]
    assert_lowrank_close(got, exp, magnitude(u, z, v, 1.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_overwrite_ignores_nan(device_backend, dtype):
    """decay == 0 writes scale*U@Z@V.T without reading W (NaN and inf are not propagated)."""
    device, backend = device_backend
    u, z, v = factors(13, 11, 4, 3, device=device)
    w = torch.full((13, 11), float("nan"), dtype=dtype, device=device)
    w[::2] = float("inf")
    got = run_lowrank(backend, [w], [u], [z], [v], 2.0, decay=0.0)[0]
    exp = run_lowrank("reference", [torch.zeros_like(w)], [u], [z], [v], 2.0, decay=0.0)[0]
    assert torch.isfinite(got).all()
    assert_lowrank_close(got, exp, magnitude(u, z, v, 2.0))


def test_list_of_mixed_shapes_and_dtypes(device_backend):
    device, backend = device_backend
    shapes = [(7, 5, 3, 3), (16, 16, 4, 2), (7, 5, 3, 3), (1, 9, 2, 5), (16, 16, 4, 2)]
    if not small(device, backend):
        shapes += [(200, 64, 8, 8), (64, 200, 8, 8), (200, 64, 8, 8)]
    ws, us, zs, vs = [], [], [], []
    for i, (m, n, r, s) in enumerate(shapes):
        u, z, v = factors(m, n, r, s, seed=10 + i, device=device)
        ws.append(torch.randn(m, n).to(DTYPES[i % 3]).to(device))
        us.append(u), zs.append(z), vs.append(v)
    scales = [0.1 * (i + 1) for i in range(len(shapes))]
    exp = run_lowrank("reference", ws, us, zs, vs, scales, decay=0.5)
    got = run_lowrank(backend, ws, us, zs, vs, scales, decay=0.5)
    for g, e, u, z, v, c in zip(got, exp, us, zs, vs, scales):
        assert_lowrank_close(g, e, magnitude(u, z, v, c))


def test_list_equals_one_call_per_matrix():
    shapes = [(7, 5, 3, 3), (16, 16, 4, 2), (7, 5, 3, 3)]
    ws = [torch.randn(m, n) for m, n, _, _ in shapes]
    fs = [factors(*sh, seed=i) for i, sh in enumerate(shapes)]
    together = [w.clone() for w in ws]
    pk.lowrank_perturb_(together, [f[0] for f in fs], [f[1] for f in fs], [f[2] for f in fs], 0.7)
    for w, t, (u, z, v) in zip(ws, together, fs):
        pk.lowrank_perturb_(w, u, z, v, 0.7)
        assert torch.equal(w, t)


def test_non_contiguous_and_low_precision_factors():
    """U, Z, V may be strided views and any float dtype; they are read as float32."""
    u, z, v = factors(40, 30, 6, 6)
    w = torch.randn(40, 30)
    exp = run_lowrank("reference", [w], [u], [z], [v], 1.0)[0]
    ut = u.T.contiguous().T  # column-major view
    got = run_lowrank("native", [w], [ut], [z.T.contiguous().T], [v], 1.0)[0]
    assert_lowrank_close(got, exp, magnitude(u, z, v, 1.0))
    got16 = run_lowrank("native", [w], [u.half()], [z.bfloat16()], [v.half()], 1.0)[0]
    exp16 = run_lowrank("reference", [w], [u.half().float()], [z.bfloat16().float()],
                        [v.half().float()], 1.0)[0]
    assert_lowrank_close(got16, exp16, magnitude(u, z, v, 1.0))


def test_empty_matrices_are_skipped():
    w0, w1 = torch.zeros(0, 5), torch.zeros(3, 4)
    u0, z0, v0 = factors(0, 5, 2, 2)
    u1, z1, v1 = factors(3, 4, 2, 2)
    pk.lowrank_perturb_([w0, w1], [u0, u1], [z0, z1], [v0, v1], 1.0)
    assert w0.shape == (0, 5)
    torch.testing.assert_close(w1, u1 @ z1 @ v1.T, rtol=1e-5, atol=1e-6)


def test_version_counter_is_bumped():
    w = torch.zeros(4, 4)
    before = w._version
    pk.lowrank_perturb_(w, *factors(4, 4, 2, 2), 1.0)
    assert w._version > before


# ----------------------------------------------------------------------------------------------
# gaussian_sketch
# ----------------------------------------------------------------------------------------------
def materialized(m, n, seeds, coeffs, key, offset, device="cpu"):
    """The matrix perturb_ writes into a zero m x n tensor with this key and offset."""
    a = torch.empty(m, n, device=device)
    pk.perturb_(a, seeds, coeffs, keys=[key], offsets=[offset], decay=0.0)
    return a


SKETCH_CASES = [(1, 1, 1), (3, 5, 2), (37, 53, 6), (257, 129, 20), (1000, 300, 33), (64, 4097, 3)]
TINY_SKETCH_CASES = [(1, 1, 1), (3, 5, 2), (9, 13, 4), (16, 20, 17)]


@pytest.mark.parametrize("transpose", [False, True])
def test_sketch_equals_materialized_product(device_backend, transpose):
    device, backend = device_backend
    cases = TINY_SKETCH_CASES if small(device, backend) else SKETCH_CASES
    seeds, coeffs = [3, (1 << 64) - 1, 1 << 40], [0.5, -1.0, 0.25]
    for i, (m, n, q) in enumerate(cases):
        key, offset = 7 + i, [0, 5, (1 << 32) * 4 - 6][i % 3]
        a = materialized(m, n, seeds, coeffs, key, offset, device)
        omega = torch.randn(m if transpose else n, q, generator=torch.Generator().manual_seed(i)).to(device)
        with pk.use_backend(backend):
            got = pk.gaussian_sketch(m, n, seeds, coeffs, omega, key=key, offset=offset, transpose=transpose)
        assert got.device.type == device and got.dtype == torch.float32
        exp = (a.double().T if transpose else a.double()) @ omega.double()
        assert_sketch_close(got, exp.float(), coeffs, omega)


def test_sketch_of_identity_is_the_matrix_perturb_adds(device_backend):
    """A @ I == A entry for entry: the sketch draws exactly perturb_'s stream."""
    device, backend = device_backend
    m, n = (6, 11) if small(device, backend) else (40, 203)
    seeds, coeffs, key, offset = [9, 10], [1.0, -0.5], 3, 4 * (1 << 32) - 9
    with pk.use_backend(backend):
        a = materialized(m, n, seeds, coeffs, key, offset, device)
        got = pk.gaussian_sketch(m, n, seeds, coeffs, torch.eye(n, device=device), key=key, offset=offset)
        got_t = pk.gaussian_sketch(m, n, seeds, coeffs, torch.eye(m, device=device), key=key,
                                   offset=offset, transpose=True)
    torch.testing.assert_close(got, a, rtol=0, atol=0)
    torch.testing.assert_close(got_t, a.T, rtol=0, atol=0)


def test_sketch_batch_equals_single_calls(device_backend):
    device, backend = device_backend
    problems = [(5, 7, 1, 0), (5, 7, 2, 3), (9, 4, 1, 100), (5, 7, 3, 8)]
    seeds, coeffs = [4, 5], [0.3, 0.7]
    for transpose in (False, True):
        omegas = [torch.randn(p[0] if transpose else p[1], 3 + i).to(device) for i, p in enumerate(problems)]
        with pk.use_backend(backend):
            batch = pk.gaussian_sketch_batch(problems, seeds, coeffs, omegas, transpose=transpose)
            single = [pk.gaussian_sketch(m, n, seeds, coeffs, om, key=k, offset=o, transpose=transpose)
                      for (m, n, k, o), om in zip(problems, omegas)]
        for b, s in zip(batch, single):
            torch.testing.assert_close(b, s, rtol=0, atol=0)


def test_sketch_low_precision_omega_and_empty():
    om = torch.randn(13, 4)
    full = pk.gaussian_sketch(6, 13, 1, 1.0, om.bfloat16().float())
    torch.testing.assert_close(pk.gaussian_sketch(6, 13, 1, 1.0, om.bfloat16()), full, rtol=0, atol=0)
    assert pk.gaussian_sketch(0, 13, 1, 1.0, om).shape == (0, 4)
    assert pk.gaussian_sketch(6, 0, 1, 1.0, torch.zeros(0, 4)).abs().sum() == 0
    assert pk.gaussian_sketch(6, 13, [], [], om).abs().sum() == 0  # no seeds: A = 0
    assert pk.gaussian_sketch_batch([], 1, 1.0, []) == []


# ----------------------------------------------------------------------------------------------
# GaussianSum
# ----------------------------------------------------------------------------------------------
def test_gaussian_sum_operator():
    g = pk.GaussianSum(24, 18, [1, 2, 3], [0.5, 0.2, -0.1], key=5, offset=3)
    d = g.materialize()
    assert g.shape == (24, 18) and g.T.shape == (18, 24)
    torch.testing.assert_close(d, materialized(24, 18, [1, 2, 3], [0.5, 0.2, -0.1], 5, 3), rtol=0, atol=0)
    torch.testing.assert_close(g.T.materialize(), d.T, rtol=0, atol=0)
    x, y = torch.randn(18, 3), torch.randn(4, 24)
    torch.testing.assert_close(g @ x, d @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.T @ y.T, d.T @ y.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y @ g, y @ d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g @ x[:, 0], d @ x[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((2.0 * g).materialize(), 2.0 * d, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close((-g).materialize(), -d, rtol=0, atol=0)
    assert g.materialize(dtype=torch.bfloat16).dtype == torch.bfloat16
    assert "GaussianSum(m=24" in repr(g)


def test_gaussian_sum_bad_arguments():
    with pytest.raises(ValueError, match="seeds"):
        pk.GaussianSum(3, 3, [1, 2], [1.0])
    with pytest.raises(ValueError, match="key"):
        pk.GaussianSum(3, 3, 1, 1.0, key=-1)
    with pytest.raises(TypeError, match="m"):
        pk.GaussianSum(3.0, 3, 1, 1.0)
    with pytest.raises(ValueError, match="offset"):
        pk.GaussianSum(4, 4, 1, 1.0, offset=(1 << 63) - 8)
