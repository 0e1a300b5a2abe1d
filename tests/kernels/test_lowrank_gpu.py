"""GPU checks of the CUDA low-rank kernels (marked gpu; skipped without a CUDA device).

``lowrank_perturb_`` (tiled GEMM with an in-place epilogue) and ``gaussian_sketch(_batch)``
(implicit A generated in shared memory) on the cuda backend are compared with the reference
backend on the same CUDA tensors and with the native backend on CPU copies. Tolerances: float32
``atol = 1e-5 * (1 + mag)``, mag the largest sum of |terms| of one output element (different
summation orders); bfloat16/float16 additionally one unit in the last place (2**-7 / 2**-10
relative), since two float32 values that differ in the last bits may round to neighbours.
Sketches against the reference backend, whose xi only meets the stream's XI_TOL contract, use
``pgap_kernels.testing.assert_sketch_close``; against native (the same header math, so the same
A bit for bit) the float32 tolerance above.
"""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels.args import lowrank_factors
from pgap_kernels._native import build_info as native_build_info
from pgap_kernels.testing import assert_sketch_close

from conftest import GPU_REASON, HAS_CUDA, require

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=GPU_REASON)]

RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
NEAR_2_34 = (1 << 32) * 4 - 5  # Philox block counter crosses 2**32 inside the matrix; odd offset
NATIVE_LIMIT = 60_000_000      # m*n*k above which the (slow, plain-loop) native check is skipped


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _factors(m, n, r, s, seed):
    g = _gen(seed)
    return (torch.randn(m, r, generator=g), torch.randn(r, s, generator=g),
            torch.randn(n, s, generator=g))


def _lowrank_mag(u, z, v, scale):
    """Largest sum over the inner index of |L[a, t] R[b, t]| (the scale of rounding errors)."""
    left, right = lowrank_factors(u, z, v, scale)
    return float((left.abs() @ right.abs().t()).max())


def _assert_lowrank_close(actual, expected, mag, dtype):
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), rtol=RTOL[dtype],
                               atol=1e-5 * (1.0 + mag))


@pytest.fixture(autouse=True)
def _tf32_on():
    """TF32 allowed, as most training scripts set it: the reference backend's products must stay
    IEEE float32 anyway (pgap_kernels._precision), so cuda is compared with it under TF32."""
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    yield
    torch.backends.cuda.matmul.fp32_precision = saved


def _weights(m, n, dtype, decay, seed, device):
    if decay == 0.0:  # must not be read
        return torch.full((m, n), float("nan"), dtype=dtype, device=device)
    return torch.randn(m, n, generator=_gen(seed)).to(dtype=dtype, device=device)


def _run_lowrank(backend, W, U, Z, V, scale, decay):
    with pk.use_backend(backend):
        pk.lowrank_perturb_(W, U, Z, V, scale, decay=decay)


def _check_lowrank(m, n, k, dtype, decay, seed=0, scale=0.75, native=True):
    """cuda vs reference (same device) vs native (CPU) for one W (m x n), inner size k."""
    require("cuda", "cuda")
    U, Z, V = _factors(m, n, k + 3, k, seed)  # k = min(r, s): L = scale*U@Z, R = V
    W0 = _weights(m, n, dtype, decay, seed + 1, "cuda")
    Uc, Zc, Vc = U.cuda(), Z.cuda(), V.cuda()
    W = W0.clone()
    _run_lowrank("cuda", W, Uc, Zc, Vc, scale, decay)
    torch.cuda.synchronize()
    assert torch.isfinite(W.float()).all()
    mag = _lowrank_mag(U, Z, V, scale) + (abs(decay) * float(W0.float().abs().max()) if decay else 0.0)
    ref = W0.clone()
    _run_lowrank("reference", ref, Uc, Zc, Vc, scale, decay)
    _assert_lowrank_close(W, ref, mag, dtype)
    if native and m * n * k <= NATIVE_LIMIT:
        require("cpu", "native")
        cpu = W0.to("cpu", copy=True)
        _run_lowrank("native", cpu, U, Z, V, scale, decay)
        _assert_lowrank_close(W, cpu, mag, dtype)
    # Deterministic: a second run from the same start gives the same bits.
    again = W0.clone()
    _run_lowrank("cuda", again, Uc, Zc, Vc, scale, decay)
    assert torch.equal(again, W)


SHAPES = [(1, 1), (3, 5), (257, 129), (1000, 3000), (4097, 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("decay", [0.0, 1.0, 0.9])
def test_lowrank_shapes_dtypes_decay(m, n, dtype, decay):
    for k in (1, 7, 64):
        _check_lowrank(m, n, k, dtype, decay, seed=k)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 256])
def test_lowrank_every_k(k):
    _check_lowrank(257, 129, k, torch.float32, 0.9, seed=100 + k)
    _check_lowrank(130, 300, k, torch.bfloat16, 1.0, seed=200 + k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lowrank_large_tiles_and_k256(dtype):
    """Enough 128x128 tiles to select the large-tile kernel; k = 256 spans 32 k steps."""
    _check_lowrank(2048, 2304, 256, dtype, 0.9, seed=5, native=False)
    _check_lowrank(2051, 2309, 33, dtype, 0.0, seed=6, native=False)


@pytest.mark.parametrize("m,n", [(1, 1 << 22), ((1 << 20) + 3, 3), (70000, 5)])
def test_lowrank_long_and_thin(m, n):
    """Many tiles along one dimension (more than 65535 rows; a 4M-column row)."""
    _check_lowrank(m, n, 4, torch.bfloat16, 0.9, seed=7, native=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lowrank_misaligned_weight(dtype):
    """A contiguous W whose data pointer is not 16-byte aligned (scalar epilogue)."""
    require("cuda", "cuda")
    m, n, k = 67, 132, 9
    U, Z, V = _factors(m, n, k, k, 11)
    base = torch.randn(m * n + 1, generator=_gen(12)).to(dtype=dtype, device="cuda")
    W = base[1:].view(m, n)
    assert W.data_ptr() % 16 != 0
    expected = W.clone()
    _run_lowrank("reference", expected, U.cuda(), Z.cuda(), V.cuda(), -1.5, 0.9)
    first = base[0].clone()
    mag = _lowrank_mag(U, Z, V, -1.5) + 0.9 * float(W.float().abs().max())
    _run_lowrank("cuda", W, U.cuda(), Z.cuda(), V.cuda(), -1.5, 0.9)
    assert torch.equal(base[0], first)  # the element before W is untouched
    _assert_lowrank_close(W, expected, mag, dtype)


@pytest.mark.parametrize("m,n,k", [(3, 5, 1), (257, 129, 7), (1000, 3001, 16), (2048, 2304, 64)])
@pytest.mark.parametrize("decay", [0.9, -1.3])
def test_lowrank_float32_equals_native_bit_for_bit(m, n, k, decay):
    """The same fmaf chain over k, ascending, and the same epilogue fma(decay, W, acc) as the
    AVX2/AVX-512 host kernels: the same bits for a float32 W (decay*W + acc, rounded twice,
    misses by an ulp). Z = I makes L = scale*U@Z exact, so both backends get the same factors.
    Shapes: small and large tiles, n % 4 != 0 (scalar epilogue)."""
    require("cuda", "cuda")
    require("cpu", "native")
    if native_build_info()["host_isa"] == "generic":
        pytest.skip("the generic host build does not fuse multiply-adds")
    U, _, V = _factors(m, n, k, k, seed=m + k)
    Z = torch.eye(k)
    W0 = torch.randn(m, n, generator=_gen(k))
    cpu = W0.clone()
    _run_lowrank("native", cpu, U, Z, V, 0.75, decay)
    W = W0.cuda()
    _run_lowrank("cuda", W, U.cuda(), Z.cuda(), V.cuda(), 0.75, decay)
    assert torch.equal(W.cpu(), cpu)


def test_lowrank_batch_of_mixed_shapes_and_dtypes():
    """One call: same-shape groups (batched launches, count > 1) and singletons, all dtypes."""
    require("cuda", "cuda")
    specs = [(1000, 3000, 16, torch.float32), (1000, 3000, 16, torch.float32),
             (1000, 3000, 16, torch.bfloat16), (3, 5, 2, torch.float16), (3, 5, 2, torch.float16),
             (257, 129, 64, torch.bfloat16), (1, 1, 1, torch.float32), (4097, 33, 7, torch.float16)]
    Ws, Us, Zs, Vs, scales, mags = [], [], [], [], [], []
    for p, (m, n, k, dtype) in enumerate(specs):
        U, Z, V = _factors(m, n, k, k + 1, 300 + p)  # k = min(r, s) = r here: L = U, R = V@Z.T
        Ws.append(torch.randn(m, n, generator=_gen(400 + p)).to(dtype=dtype, device="cuda"))
        Us.append(U.cuda())
        Zs.append(Z.cuda())
        Vs.append(V.cuda())
        scales.append(0.5 + 0.1 * p)
        mags.append(_lowrank_mag(U, Z, V, scales[-1]) + 0.8 * float(Ws[-1].float().abs().max()))
    refs = [w.clone() for w in Ws]
    _run_lowrank("cuda", Ws, Us, Zs, Vs, scales, 0.8)
    _run_lowrank("reference", refs, Us, Zs, Vs, scales, 0.8)
    for (m, n, k, dtype), w, ref, mag in zip(specs, Ws, refs, mags):
        _assert_lowrank_close(w, ref, mag, dtype)


def test_lowrank_on_a_side_stream():
    require("cuda", "cuda")
    m, n, k = 1000, 3000, 32
    U, Z, V = _factors(m, n, k, k, 21)
    W = torch.randn(m, n, device="cuda")
    mag = _lowrank_mag(U, Z, V, 2.0) + 0.5 * float(W.abs().max())
    U, Z, V = U.cuda(), Z.cuda(), V.cuda()
    ref = W.clone()
    _run_lowrank("reference", ref, U, Z, V, 2.0, 0.5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        _run_lowrank("cuda", W, U, Z, V, 2.0, 0.5)
    s.synchronize()
    _assert_lowrank_close(W, ref, mag, torch.float32)


# ---------------------------------------------------------------------------------------------
# gaussian_sketch

SEEDS3 = ([5, (1 << 64) - 1, 1234567890123], [0.5, -1.25, 2.0])


def _implicit_a(m, n, seeds, coeffs, key, offset):
    """A (m x n, float32, CPU) exactly as perturb_ writes it (native backend)."""
    a = torch.zeros(m, n)
    with pk.use_backend("native"):
        pk.perturb_([a], seeds, coeffs, keys=[key], offsets=[offset], decay=0.0)
    return a


def _sketch(backend, m, n, seeds, coeffs, omega, key, offset, transpose):
    with pk.use_backend(backend):
        return pk.gaussian_sketch(m, n, seeds, coeffs, omega, key=key, offset=offset,
                                  transpose=transpose)


def _check_sketch(m, n, q, transpose, seeds, coeffs, key=3, offset=0, seed=0, native=True):
    require("cuda", "cuda")
    inner = m if transpose else n
    omega = torch.randn(inner, q, generator=_gen(seed))
    omega_c = omega.cuda()
    out = _sketch("cuda", m, n, seeds, coeffs, omega_c, key, offset, transpose)
    assert out.dtype == torch.float32 and out.device == omega_c.device
    assert out.shape == ((n if transpose else m), q)
    assert torch.isfinite(out).all()
    # mag: largest sum of |A|*|omega| terms of one output (A materialized only in the test).
    require("cpu", "native")
    a = _implicit_a(m, n, seeds, coeffs, key, offset)
    a_op = a.t() if transpose else a
    mag = float((a_op.abs() @ omega.abs()).max()) if a_op.numel() and q else 0.0
    ref = _sketch("reference", m, n, seeds, coeffs, omega_c, key, offset, transpose)
    assert_sketch_close(out, ref, coeffs, omega)
    if native:
        cpu = _sketch("native", m, n, seeds, coeffs, omega, key, offset, transpose)
        torch.testing.assert_close(out.cpu(), cpu, rtol=1e-5, atol=1e-5 * (1.0 + mag))
    again = _sketch("cuda", m, n, seeds, coeffs, omega_c, key, offset, transpose)
    assert torch.equal(again, out)  # no atomics: same bits every run


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("q", [1, 10, 64, 300])
def test_sketch_shapes(m, n, transpose, q):
    _check_sketch(m, n, q, transpose, *SEEDS3, key=9, offset=NEAR_2_34, seed=q)


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, NEAR_2_34, (1 << 34) + 2])
@pytest.mark.parametrize("transpose", [False, True])
def test_sketch_offsets(offset, transpose):
    _check_sketch(257, 129, 33, transpose, *SEEDS3, key=1, offset=offset)
    _check_sketch(64, 128, 17, transpose, [7], [1.0], key=2, offset=offset)  # n % 4 == 0


@pytest.mark.parametrize("q", [1, 2, 31, 32, 33, 64, 65, 128, 129, 256, 257, 300, 513])
@pytest.mark.parametrize("transpose", [False, True])
def test_sketch_every_column_tile(q, transpose):
    _check_sketch(200, 150, q, transpose, *SEEDS3, key=4, offset=6, seed=q)


@pytest.mark.parametrize("m,n", [(3, 5), (37, 300), (129, 70), (64, 64), (1, 1)])
@pytest.mark.parametrize("transpose", [False, True])
def test_sketch_with_identity_is_exactly_a(m, n, transpose):
    """omega = I gives A (or A^T) exactly: the generated entries equal perturb_'s bits."""
    require("cuda", "cuda")
    require("cpu", "native")
    seeds, coeffs = SEEDS3
    for offset in (0, 3, NEAR_2_34):
        a = _implicit_a(m, n, seeds, coeffs, 11, offset)
        eye = torch.eye(m if transpose else n, device="cuda")
        out = _sketch("cuda", m, n, seeds, coeffs, eye, 11, offset, transpose)
        assert torch.equal(out.cpu(), a.t() if transpose else a), (m, n, transpose, offset)
        with pk.use_backend("cuda"):
            z = torch.zeros(m, n, device="cuda")
            pk.perturb_([z], seeds, coeffs, keys=[11], offsets=[offset], decay=0.0)
        assert torch.equal(z.cpu(), a)


def test_sketch_no_seeds_and_empty():
    require("cuda", "cuda")
    omega = torch.randn(5, 4, device="cuda")
    with pk.use_backend("cuda"):
        assert torch.equal(pk.gaussian_sketch(3, 5, [], [], omega), torch.zeros(3, 4, device="cuda"))
        empty = torch.randn(0, 4, device="cuda")
        out = pk.gaussian_sketch(0, 5, [1], [1.0], empty, transpose=True)
        assert torch.equal(out, torch.zeros(5, 4, device="cuda"))  # empty inner dimension: zeros
        assert pk.gaussian_sketch(0, 5, [1], [1.0], omega).shape == (0, 4)


@pytest.mark.parametrize("transpose", [False, True])
def test_sketch_long_and_thin(transpose):
    """Many row tiles (more than 65535 * 16 rows of output)."""
    m, n = ((1 << 20) + 5, 3) if not transpose else (3, (1 << 20) + 5)
    _check_sketch(m, n, 2, transpose, [8, 9], [1.0, -0.5], key=5, offset=NEAR_2_34, native=False)


@pytest.mark.parametrize("transpose", [False, True])
def test_sketch_batch_of_mixed_shapes(transpose):
    """One call, several (m, n, q) groups, some with more than one problem (batched launch)."""
    require("cuda", "cuda")
    problems = [(3, 5, 1, 7), (257, 129, 2, NEAR_2_34), (3, 5, 3, 0), (257, 129, 4, 1),
                (1000, 300, 5, 2), (1, 1, 6, 3)]
    qs = [7, 33, 7, 33, 64, 1]
    seeds, coeffs = SEEDS3
    omegas = [torch.randn(p[0] if transpose else p[1], q, generator=_gen(i))
              for i, (p, q) in enumerate(zip(problems, qs))]
    with pk.use_backend("cuda"):
        outs = pk.gaussian_sketch_batch(problems, seeds, coeffs, [o.cuda() for o in omegas],
                                        transpose=transpose)
    with pk.use_backend("native"):
        cpus = pk.gaussian_sketch_batch(problems, seeds, coeffs, omegas, transpose=transpose)
    for (m, n, key, offset), omega, out, cpu in zip(problems, omegas, outs, cpus):
        a = _implicit_a(m, n, seeds, coeffs, key, offset)
        mag = float(((a.t() if transpose else a).abs() @ omega.abs()).max())
        torch.testing.assert_close(out.cpu(), cpu, rtol=1e-5, atol=1e-5 * (1.0 + mag))


def test_sketch_on_a_side_stream():
    require("cuda", "cuda")
    seeds, coeffs = SEEDS3
    omega = torch.randn(3000, 64, generator=_gen(1)).cuda()
    ref = _sketch("reference", 1000, 3000, seeds, coeffs, omega, 0, 0, False)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = _sketch("cuda", 1000, 3000, seeds, coeffs, omega, 0, 0, False)
    s.synchronize()
    assert_sketch_close(out, ref, coeffs, omega)
