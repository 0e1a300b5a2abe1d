"""Triton low-rank ops (lowrank_perturb_, gaussian_sketch) against the reference backend.

On a CPU-only machine the kernels run under TRITON_INTERPRET=1 (see conftest.py), so shapes stay
tiny; the gpu-marked cases run the same checks on the compiled kernels.
"""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels._native import build_info as native_build_info
from pgap_kernels.testing import ULP

from conftest import require

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.gpu, id="cuda")]
RTOL = {torch.float32: 1e-5, torch.bfloat16: ULP[torch.bfloat16], torch.float16: ULP[torch.float16]}
SEEDS = [3, 2**64 - 1]
COEFFS = [0.75, -1.5]


@pytest.fixture(params=DEVICES)
def device(request):
    require(request.param, "triton")
    return request.param


def _factors(m, n, r, s, gen, device):
    U, Z, V = (torch.randn(*shape, generator=gen).to(device) for shape in ((m, r), (r, s), (n, s)))
    return U, Z, V


def _assert_lowrank_close(actual, expected, W0, U, Z, V, scale, decay):
    """fp32: 1e-5 relative plus 1e-5*(1 + |decay*W| + |scale*U@Z@V.T|) absolute; bf16/fp16: one
    ulp relative on top of that absolute term."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    d = lambda x: x.detach().double().cpu()  # noqa: E731
    mag = (abs(scale) * d(U).abs() @ d(Z).abs() @ d(V).abs().T).max().item()
    if decay != 0.0:
        mag += abs(decay) * d(W0).abs().max().item()
    torch.testing.assert_close(d(actual), d(expected), rtol=RTOL[actual.dtype], atol=1e-5 * (1 + mag))


def _assert_sketch_close(actual, expected, coeffs, omega):
    """Per column: every xi within 1e-5*(1 + |xi|) (|xi| < 7) and reordered float32 sums, so a
    small multiple of sum|c| * ||omega[:, col]||_1."""
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    err = (actual.double().cpu() - expected.double().cpu()).abs()
    bound = 1e-4 * sum(abs(c) for c in coeffs) * omega.double().cpu().abs().sum(0) + 1e-6
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g}, bound {bound.min().item():.3g}"


def _lowrank_both(Ws, Us, Zs, Vs, scales, decay):
    """(triton result, reference result) of one lowrank_perturb_ call on copies of Ws."""
    got, want = [w.clone() for w in Ws], [w.clone() for w in Ws]
    with pk.use_backend("triton"):
        pk.lowrank_perturb_(got, Us, Zs, Vs, scales, decay=decay)
    with pk.use_backend("reference"):
        pk.lowrank_perturb_(want, Us, Zs, Vs, scales, decay=decay)
    return got, want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("decay", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (3, 5, 3), (17, 33, 16), (18, 20, 33)])
def test_lowrank_matches_reference(device, dtype, decay, m, n, k):
    gen = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    # Z of shape (k, k + 1): the inner size of L @ R.T is min(r, s) = k.
    U, Z, V = _factors(m, n, k, k + 1, gen, device)
    W = torch.randn(m, n, generator=gen).to(device=device, dtype=dtype)
    if decay == 0.0:
        W.fill_(float("nan"))  # never read
    (got,), (want,) = _lowrank_both([W], [U], [Z], [V], [0.5], decay)
    assert not got.isnan().any()
    _assert_lowrank_close(got, want, W, U, Z, V, 0.5, decay)


def test_lowrank_single_tensor_api(device):
    gen = torch.Generator().manual_seed(5)
    U, Z, V = _factors(9, 7, 2, 4, gen, device)
    W = torch.randn(9, 7, generator=gen).to(device)
    got, want = W.clone(), W.clone()
    with pk.use_backend("triton"):
        pk.lowrank_perturb_(got, U, Z, V, -2.0, decay=0.5)
    with pk.use_backend("reference"):
        pk.lowrank_perturb_(want, U, Z, V, -2.0, decay=0.5)
    _assert_lowrank_close(got, want, W, U, Z, V, -2.0, 0.5)


def test_lowrank_batch_of_mixed_shapes_and_dtypes(device):
    """Same-shape matrices share a launch (pointer tables); others get their own."""
    gen = torch.Generator().manual_seed(11)
    specs = [(17, 33, 3, torch.float32), (17, 33, 3, torch.float32), (5, 3, 1, torch.bfloat16),
             (17, 33, 3, torch.float16), (17, 33, 16, torch.float32), (5, 3, 1, torch.bfloat16)]
    Ws, Us, Zs, Vs = [], [], [], []
    for m, n, k, dtype in specs:
        U, Z, V = _factors(m, n, k, k, gen, device)
        Ws.append(torch.randn(m, n, generator=gen).to(device=device, dtype=dtype))
        Us.append(U), Zs.append(Z), Vs.append(V)
    scales = [0.5, -1.0, 2.0, 0.25, 1.0, 3.0]
    got, want = _lowrank_both(Ws, Us, Zs, Vs, scales, 0.9)
    for p in range(len(specs)):
        _assert_lowrank_close(got[p], want[p], Ws[p], Us[p], Zs[p], Vs[p], scales[p], 0.9)


@pytest.mark.parametrize("decay", [0.9, -1.7])
def test_epilogue_is_one_fma_as_native(device, decay):
    """W <- fma(decay, W, acc) rounded once, as native (AVX2/AVX-512) and cuda do: with an exact
    product (small integers, Z = I) every float32 element equals native's bit for bit, which
    decay*W + acc (two roundings) misses by an ulp in many elements."""
    require("cpu", "native")
    if native_build_info()["host_isa"] == "generic":
        pytest.skip("the generic host build does not fuse multiply-adds")
    gen = torch.Generator().manual_seed(21)
    m, n, k = 19, 37, 5
    U = torch.randint(-4, 5, (m, k), generator=gen).float()
    V = torch.randint(-4, 5, (n, k), generator=gen).float()
    W = torch.randn(m, n, generator=gen)
    native, got = W.clone(), W.to(device)
    with pk.use_backend("native"):
        pk.lowrank_perturb_(native, U, torch.eye(k), V, 0.25, decay=decay)
    with pk.use_backend("triton"):
        pk.lowrank_perturb_(got, U.to(device), torch.eye(k, device=device), V.to(device), 0.25,
                            decay=decay)
    assert torch.equal(got.cpu(), native)


def _sketch_both(problems, seeds, coeffs, omegas, transpose):
    with pk.use_backend("triton"):
        got = pk.gaussian_sketch_batch(problems, seeds, coeffs, omegas, transpose=transpose)
    with pk.use_backend("reference"):
        want = pk.gaussian_sketch_batch(problems, seeds, coeffs, omegas, transpose=transpose)
    return got, want


# (m, n, offset): whole-Philox-block layouts (offset and n divisible by 4) and per-element ones,
# offsets across the 2^32-block boundary of the counter's high word.
LAYOUTS = [(1, 1, 0), (3, 5, 4 * 2**32 - 6), (17, 33, 5), (20, 36, 4 * 2**32 - 8), (9, 40, 2**34 + 4)]


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("m, n, offset", LAYOUTS)
def test_sketch_matches_reference(device, m, n, offset, transpose):
    gen = torch.Generator().manual_seed(m + n)
    omega = torch.randn(m if transpose else n, 7, generator=gen).to(device)
    with pk.use_backend("triton"):
        got = pk.gaussian_sketch(m, n, SEEDS, COEFFS, omega, key=12345, offset=offset, transpose=transpose)
    with pk.use_backend("reference"):
        want = pk.gaussian_sketch(m, n, SEEDS, COEFFS, omega, key=12345, offset=offset, transpose=transpose)
    assert got.device == omega.device and got.shape == want.shape
    _assert_sketch_close(got, want, COEFFS, omega)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("m, n, offset", [(17, 33, 5), (20, 36, 4 * 2**32 - 8)])
def test_sketch_of_identity_is_the_perturb_matrix(device, m, n, offset, transpose):
    """A @ I (A.T @ I) is exactly the matrix perturb_(decay=0) writes: same stream code, and
    the products with 1 and 0 are exact."""
    A = torch.empty(m, n, device=device)
    with pk.use_backend("triton"):
        pk.perturb_(A, SEEDS, COEFFS, keys=[77], offsets=[offset], decay=0.0)
        got = pk.gaussian_sketch(m, n, SEEDS, COEFFS, torch.eye(m if transpose else n, device=device),
                                 key=77, offset=offset, transpose=transpose)
    torch.testing.assert_close(got, A.T if transpose else A, rtol=0, atol=0)


@pytest.mark.parametrize("transpose", [False, True])
def test_sketch_batch_of_mixed_problems(device, transpose):
    problems = [(17, 33, 1, 5), (17, 33, 2, 9), (20, 36, 3, 4 * 2**32 - 8), (20, 36, 4, 16),
                (3, 5), (0, 4), (4, 0), (6, 2, 5, 2**40 + 3)]
    qs = [3, 3, 17, 3, 1, 2, 2, 0]
    gen = torch.Generator().manual_seed(1)
    omegas = [torch.randn(p[0] if transpose else p[1], q, generator=gen).to(device)
              for p, q in zip(problems, qs)]
    got, want = _sketch_both(problems, SEEDS, COEFFS, omegas, transpose)
    for g, w, om in zip(got, want, omegas):
        assert g.shape == w.shape and g.device == om.device
        _assert_sketch_close(g, w, COEFFS, om)


def test_sketch_without_seeds_is_zero(device):
    omega = torch.randn(5, 3).to(device)
    with pk.use_backend("triton"):
        got = pk.gaussian_sketch(4, 5, [], [], omega)
    assert got.shape == (4, 3) and not got.any()
