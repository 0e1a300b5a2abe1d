"""The Rademacher stream philox4x32-10-rademacher/v1 (docs/rng.md, "The Rademacher stream"):
known answers, an independent NumPy oracle, the shared C++ header (element by element and in the
CUDA kernel's warp schedule), and every backend bit for bit against reference through
``perturb_``, ``perturbed`` and ``perturbed_many`` with ``distribution="rademacher"``; the custom
ops and the argument's validation. Its statistics are in test_statistics.py.

Terms c*rho are exact, so every backend computes the same float32 sums: results are compared bit
for bit in every dtype. The one exception is Triton's CPU interpreter, whose float32 -> bfloat16
conversion truncates instead of rounding to nearest (on a GPU it rounds to nearest): there
bfloat16 results rounded to nearest may be one ulp apart.
"""
import numpy as np
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels import _native
from pgap_kernels._stream import RADEMACHER_DOMAIN
from pgap_kernels.backends.reference.philox import block_words
from pgap_kernels.testing import TINY, ULP, assert_within

from conftest import backend_cases, is_triton_interpreter, on_every_host_isa, require
from oracle import rho_exact

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CARRY = (1 << 39) - 200  # element 0 of a tensor 200 indices before block 2^32 (c0 -> c1 carry)

# docs/rng.md, "The Rademacher stream", test vectors: (seed, key, block, words x0..x3).
KNOWN_WORDS = [
    (1234, 0, 0, (0x4A9B4716, 0xAF22D161, 0x57921FA4, 0x06376792)),
    (1234, 0, 1, (0xE102109B, 0xED4AB279, 0xAC246854, 0x9590C1F5)),
    ((1 << 64) - 1, (1 << 32) - 1, (1 << 32) - 1, (0x38993EEE, 0x553F2FE2, 0x1CB7D215, 0x22430D95)),
    ((1 << 64) - 1, (1 << 32) - 1, 1 << 32, (0xF064DE1B, 0xE751838C, 0x3998D27D, 0x0E6C1F75)),
    (0x0123456789ABCDEF, 7, 7812500000, (0x7701CBE9, 0x56E84B7C, 0x382E3D2B, 0x9797DCB3)),
]
# (seed, key, index, rho)
KNOWN_VALUES = [
    (1234, 0, 0, 1), (1234, 0, 1, -1), (1234, 0, 2, -1), (1234, 0, 31, 1), (1234, 0, 32, -1),
    (1234, 0, 127, 1), (1234, 0, 128, -1), (1234, 0, 255, -1),
    ((1 << 64) - 1, (1 << 32) - 1, (1 << 39) - 1, 1), ((1 << 64) - 1, (1 << 32) - 1, 1 << 39, -1),
    (0x0123456789ABCDEF, 7, 10 ** 12, -1), (0x0123456789ABCDEF, 7, 10 ** 12 + 1, 1),
]
FIRST_128 = ("+--+-+++---+++-+--+--++-+-+-++-+-++++--+-+++-+--+-+++-++----+-+-++-++-+------++++-++-"
             "++----+-+-++-++-++----++--+---+--+++--+++++")  # rho(1234, 0, i), i = 0..127


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that -0.0 and +0.0 count as different."""
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, device: str, backend: str,
                stochastic: bool = False) -> None:
    """Bit for bit, except one bf16 ulp for the Triton interpreter rounding to nearest."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    actual, expected = actual.cpu(), expected.cpu()
    if is_triton_interpreter(device, backend) and actual.dtype == torch.bfloat16 and not stochastic:
        assert_within(actual, expected, rtol=ULP[torch.bfloat16], atol=TINY[torch.bfloat16])
    else:
        assert torch.equal(bits(actual), bits(expected))


def values(n, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).to(dtype).to(device)


@pytest.fixture(params=backend_cases(include_reference=True))
def any_backend(request):
    device, backend = request.param
    require(device, backend)
    return device, backend


@pytest.fixture(params=backend_cases())
def device_backend(request):
    device, backend = request.param
    require(device, backend)
    return device, backend


# -- the contract ---------------------------------------------------------------------------


def test_version_strings():
    assert pk.RADEMACHER_VERSION == "philox4x32-10-rademacher/v1"
    assert pk.STREAM_VERSIONS == {"gaussian": pk.STREAM_VERSION, "rademacher": pk.RADEMACHER_VERSION}
    assert RADEMACHER_DOMAIN == 2


@pytest.mark.parametrize("seed,key,block,words", KNOWN_WORDS)
def test_known_words(seed, key, block, words):
    got = block_words(seed, key, torch.tensor([block], dtype=torch.int64), RADEMACHER_DOMAIN)
    assert tuple(int(w) for w in got) == words
    lib, reason = _native.load()
    if lib is None:
        pytest.skip(reason)
    assert tuple(lib.philox4x32_10(block & 0xFFFFFFFF, block >> 32, key, 2, seed & 0xFFFFFFFF,
                                   seed >> 32)) == words


def test_known_values_on_every_backend(any_backend):
    device, backend = any_backend
    with pk.use_backend(backend):
        got = [float(pk.rademacher(1, seed, key=key, offset=i, device=device))
               for seed, key, i, _ in KNOWN_VALUES]
        first = pk.rademacher(128, 1234, device=device)
    assert got == [float(v) for *_, v in KNOWN_VALUES]
    assert "".join("+" if v > 0 else "-" for v in first.tolist()) == FIRST_128
    expected = rho_exact(1234, 0, np.arange(128))
    assert first.cpu().double().numpy().tolist() == expected.tolist()


@pytest.mark.parametrize("seed", [0, 1234, (1 << 32) + 5, (1 << 64) - 1])
def test_reference_matches_numpy_oracle(seed):
    with pk.use_backend("reference"):
        r = pk.rademacher(3001, seed, key=0xFFFFFFFF, offset=CARRY - 37)
    idx = np.arange(3001, dtype=np.uint64) + np.uint64(CARRY - 37)
    assert r.double().numpy().tolist() == rho_exact(seed, 0xFFFFFFFF, idx).tolist()


def test_header_element_by_element_and_warp_schedule():
    """The scalar math of pgap/rademacher.h, and the CUDA kernel's lane schedule replayed on the
    host, give reference's values (the CUDA kernel itself runs only on a GPU machine)."""
    lib, reason = _native.load()
    if lib is None:
        pytest.skip(reason)
    seed, key = 0xDEADBEEF12345678, 77
    for start, count in ((0, 300), (CARRY - 5, 400), ((1 << 62) + 3, 129)):
        with pk.use_backend("reference"):
            ref = pk.rademacher(count, seed, key=key, offset=start)
        assert torch.equal(torch.tensor(lib.rademacher_values(seed, key, start, count)), ref)
    for first_block in (0, 3, (1 << 32) - 5, (1 << 55) + 1):
        with pk.use_backend("reference"):
            ref = pk.rademacher(1024, seed, key=key, offset=first_block * 128)
        for coeff in (0.375, -1e-3):
            terms = torch.tensor(lib.rademacher_warp_terms(seed, key, first_block, coeff))
            assert torch.equal(bits(terms), bits(torch.tensor(coeff, dtype=torch.float32) * ref))


# -- rademacher() and the ops, every backend --------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_rademacher_generator(any_backend, dtype):
    device, backend = any_backend
    with pk.use_backend(backend):
        r = pk.rademacher((3, 43), 5, key=9, offset=CARRY, device=device, dtype=dtype)
    assert r.shape == (3, 43) and r.dtype == dtype and r.device.type == device
    idx = np.arange(129, dtype=np.uint64) + np.uint64(CARRY)
    assert r.reshape(-1).cpu().double().numpy().tolist() == rho_exact(5, 9, idx).tolist()
    assert pk.rademacher(0, 1, device=device).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_perturb_odd_sizes_every_backend(device_backend, dtype, rounding):
    """Sizes around a 128-element block, several seeds (one of them 2^64 - 1, one coefficient
    zero), decay and a mean term, offsets at and off block boundaries and across the carry."""
    device, backend = device_backend
    sizes = [1, 3, 127, 128, 129, 0, 4097]
    offsets = [0, 5, 127, 128, CARRY, 7, 1 << 34]
    if is_triton_interpreter(device, backend):
        sizes[-1] = 1031  # the interpreter is slow; still several programs
    tensors = [values(n, dtype, device, seed=n) for n in sizes]
    means = [values(n, dtype, device, seed=n + 1) for n in sizes]
    kwargs = dict(keys=[3 * p + 1 for p in range(len(sizes))], offsets=offsets, decay=0.97,
                  mean=means, mean_coeff=-0.25, rounding=rounding, rounding_seed=42,
                  distribution="rademacher")
    seeds, coeffs = [11, (1 << 64) - 1, 1 << 40, 5], [0.5, -2.0, 1e-3, 0.0]
    expected = [t.clone() for t in tensors]
    actual = [t.clone() for t in tensors]
    with pk.use_backend("reference"):
        pk.perturb_(expected, seeds, coeffs, **kwargs)
    with pk.use_backend(backend):
        pk.perturb_(actual, seeds, coeffs, **kwargs)
    for a, e, t in zip(actual, expected, tensors):
        assert_same(a, e, device, backend, rounding == "stochastic")
        assert t.numel() == 0 or not torch.equal(a, t)


def test_perturb_mixed_dtypes_many_tensors(device_backend):
    device, backend = device_backend
    small = is_triton_interpreter(device, backend)
    sizes = [5, 130, 1, 256, 77] if small else [5, 130, 1, 4096, 8191, 300, 2, 12289]
    tensors = [values(n, DTYPES[p % 3], device, seed=p) for p, n in enumerate(sizes)]
    expected = [t.clone() for t in tensors]
    actual = [t.clone() for t in tensors]
    for name, out in (("reference", expected), (backend, actual)):
        with pk.use_backend(name):
            pk.perturb_(out, [3, 4, 5], [1.0, 0.25, -0.125], decay=0.5, distribution="rademacher")
    for a, e in zip(actual, expected):
        assert_same(a, e, device, backend)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aligned_layouts(device_backend, dtype):
    """Offsets and sizes divisible by 4 (the vectorized GPU paths), off and on 128-element
    block boundaries, with and without decay."""
    device, backend = device_backend
    sizes = [4, 64, 1028, 8] if is_triton_interpreter(device, backend) else [4, 64, 4100, 1 << 14]
    offsets = [0, 8, (1 << 39) - 16, 4 * 1001]
    tensors = [values(n, dtype, device, seed=n) for n in sizes]
    means = [values(n, dtype, device, seed=n + 5) for n in sizes]
    for kwargs in (dict(decay=0.9, mean=means, mean_coeff=0.5), dict(decay=0.0)):
        expected = [t.clone() for t in tensors]
        actual = [t.clone() for t in tensors]
        for name, out in (("reference", expected), (backend, actual)):
            with pk.use_backend(name):
                pk.perturb_(out, [5, 6], [0.5, 0.25], offsets=offsets, distribution="rademacher",
                            **kwargs)
        for a, e in zip(actual, expected):
            assert_same(a, e, device, backend)


def test_sharding_invariance(any_backend):
    """Shards with their offsets get the slices of the whole tensor's perturbation."""
    device, backend = any_backend
    n = 523 if backend in ("reference", "triton") and device == "cpu" else 40001
    whole = values(n, torch.float32, device)
    for cuts in ([0, n // 2, n], [0, 1, 6, 127, 128, 250, n // 2 + 3, n]):
        shards = [whole[a:b].clone() for a, b in zip(cuts, cuts[1:])]
        ref = whole.clone()
        with pk.use_backend(backend):
            pk.perturb_(shards, [5, 6], [1.0, -0.5], keys=[17] * len(shards), offsets=cuts[:-1],
                        decay=0.9, distribution="rademacher")
            pk.perturb_([ref], [5, 6], [1.0, -0.5], keys=[17], decay=0.9, distribution="rademacher")
        assert torch.equal(bits(torch.cat(shards)), bits(ref))


def test_overwrite_is_exactly_coeff_times_rho(any_backend):
    """decay 0 writes c*rho without reading t (even NaN/inf), exactly."""
    device, backend = any_backend
    t = torch.full((300,), float("nan"), device=device)
    t[::3] = float("inf")
    with pk.use_backend(backend):
        pk.perturb_([t], 8, 0.375, keys=[4], offsets=[100], decay=0.0, distribution="rademacher")
        r = pk.rademacher(300, 8, key=4, offset=100, device=device)
    assert torch.equal(t, 0.375 * r) and set(r.unique().tolist()) == {-1.0, 1.0}


def test_plus_minus_eps_round_trip(any_backend):
    """+eps then -eps on weights whose float32 sums are exact (multiples of 2^-20 below 1,
    eps = 2^-10): the first pass adds exactly eps*rho, the second restores theta bit for bit."""
    device, backend = any_backend
    theta = (values(999, torch.float32, device).clamp(-0.99, 0.99) * 2 ** 20).round() / 2 ** 20
    t = theta.clone()
    with pk.use_backend(backend):
        pk.perturb_([t], 77, 2.0 ** -10, distribution="rademacher")
        mid = t.clone()
        pk.perturb_([t], 77, -(2.0 ** -10), distribution="rademacher")
        rho = pk.rademacher(999, 77, device=device)
    assert torch.equal((mid - theta) * 1024, rho)
    assert torch.equal(t, theta)


def test_empty_inputs(any_backend):
    device, backend = any_backend
    with pk.use_backend(backend):
        pk.perturb_([], 1, 1.0, distribution="rademacher")
        e = torch.empty(0, device=device)
        pk.perturb_([e, torch.empty(2, 0, device=device)], 1, 1.0, distribution="rademacher")
        assert pk.perturbed(e, 1, 1.0, distribution="rademacher").numel() == 0
        assert pk.perturbed_many([], 1, 1.0, distribution="rademacher") == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_perturbed_and_perturbed_many_equal_perturb_(any_backend, dtype):
    """The out-of-place ops are the in-place one with decay 1 on a clone, bit for bit, and leave
    their sources unchanged."""
    device, backend = any_backend
    xs = [values(n, dtype, device, seed=n) for n in (1, 129, 300)]
    before = [x.clone() for x in xs]
    seeds, coeffs, keys, offsets = [7, 8], [1e-2, -3e-3], [0xFFFFFFFF, 2, 3], [CARRY, 5, 128]
    with pk.use_backend(backend):
        one = [pk.perturbed(x, seeds, coeffs, key=k, offset=o, distribution="rademacher")
               for x, k, o in zip(xs, keys, offsets)]
        many = pk.perturbed_many(xs, seeds, coeffs, keys=keys, offsets=offsets,
                                 distribution="rademacher")
        in_place = [x.clone() for x in xs]
        pk.perturb_(in_place, seeds, coeffs, keys=keys, offsets=offsets, distribution="rademacher")
        gauss = pk.perturbed(xs[1], seeds, coeffs, key=keys[1], offset=offsets[1])
    for a, b, c, x, x0 in zip(one, many, in_place, xs, before):
        assert torch.equal(bits(a), bits(c)) and torch.equal(bits(b), bits(c))
        assert torch.equal(bits(x), bits(x0)), "a source was written"
    assert not torch.equal(gauss, one[1])


def test_host_isas_agree():
    """Every instruction-set build of the native kernel draws the same signs (bit for bit)."""
    tensors = [values(n, d, seed=n) for n, d in ((4097, torch.bfloat16), (3, torch.float32),
                                                  (9000, torch.float16), (1 << 14, torch.float32))]
    offsets = [1, CARRY - 3, 130, (1 << 39) - 4096 * 2 - 5]

    def compute():
        out = [t.clone() for t in tensors]
        with pk.use_backend("native"):
            pk.perturb_(out, [1, 2], [0.3, -0.1], decay=0.99, offsets=offsets,
                        distribution="rademacher", rounding="stochastic", rounding_seed=5)
        return [bits(t) for t in out]

    on_every_host_isa(compute)


# -- the custom ops and validation ------------------------------------------------------------


def zo_pair(params, w, seed, eps):
    """MeZO's three in-place passes and a functional pair, all Rademacher."""
    pk.perturb_(params, seed, eps, distribution="rademacher")
    pk.perturb_(params, seed, -2 * eps, distribution="rademacher", rounding="stochastic",
                rounding_seed=3)
    pk.perturb_(params, seed, eps, decay=0.999, distribution="rademacher")
    plus = pk.perturbed(w, seed, eps, key=7, distribution="rademacher")
    minus = pk.perturbed_many([w], seed, -eps, keys=[7], distribution="rademacher")[0]
    return plus, minus


def test_torch_compile_fullgraph_matches_eager():
    eager = [values(33, torch.float32), values(300, torch.bfloat16, seed=1)]
    compiled = [t.clone() for t in eager]
    w = values((6, 5), torch.float32, seed=2)
    out_e = zo_pair(eager, w, 5, 1e-2)
    out_c = torch.compile(zo_pair, fullgraph=True)(compiled, w, 5, 1e-2)
    for a, b in zip(eager + list(out_e), compiled + list(out_c)):
        assert torch.equal(bits(a), bits(b))


def test_fake_tensor_mode_goes_through_the_ops():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        t = torch.empty(5)
        pk.perturb_([t], 1, 1.0, distribution="rademacher")
        y = pk.perturbed(t, 1, 1.0, distribution="rademacher")
        ys = pk.perturbed_many([t], 1, 1.0, distribution="rademacher")
        r = pk.rademacher((2, 3), 1)
    assert y.shape == (5,) and ys[0].shape == (5,) and r.shape == (2, 3)


BAD = ["normal", "Gaussian", "", None, 1, ["rademacher"]]


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("bad", BAD)
def test_bad_distribution_is_refused_before_any_write(backend, bad):
    t = values(300, torch.bfloat16)
    m = values(300, torch.bfloat16, seed=1)
    out = torch.zeros_like(t)
    watched = [t, m, out]
    before = [x.clone() for x in watched]
    match = r"distribution must be one of 'gaussian', 'rademacher'; got "
    with pk.use_backend(backend):
        with pytest.raises(ValueError, match=match):
            pk.perturb_([t], 1, 1.0, mean=[m], mean_coeff=0.5, distribution=bad)
        with pytest.raises(ValueError, match=match):
            pk.perturb_([t], 1, 1.0, rounding="stochastic", distribution=bad)
        with pytest.raises(ValueError, match=match):
            pk.perturbed(t, 1, 1.0, out=out, distribution=bad)
        with pytest.raises(ValueError, match=match):
            pk.perturbed_many([t], 1, 1.0, out=[out], distribution=bad)
        if isinstance(bad, str):  # the ops' schemas take a str
            with pytest.raises(ValueError, match=match):
                torch.ops.pgap.perturb_([t], [], [1], [1.0], [0], [0], 1.0, 0.0, "", None, bad)
            with pytest.raises(ValueError, match=match):
                torch.ops.pgap.perturbed_into(t, None, [1], [1.0], 0, 0, 0.0, out, "", bad)
    for b, x in zip(before, watched):
        assert torch.equal(bits(b), bits(x)), "a tensor was modified"
