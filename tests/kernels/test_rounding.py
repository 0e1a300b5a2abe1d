"""Stochastic rounding of perturb_, lowrank_perturb_ and subspace_perturb_ (docs/rng.md,
"Stochastic rounding", splitmix64-u16/v2): the rounding words' known answers on every
implementation and their independence from Philox; every word an exact threshold; every backend
bit for bit with reference where the float32 results agree, and with the rule applied to its own
float32 results; determinism; sharding invariance; unbiasedness (statistically); round to
nearest unchanged; validation before any write; the custom ops (opcheck, torch.compile)."""
import hashlib
import importlib.util
import math
import pathlib
import re

import pytest
import torch

import pgap_kernels as pk
from pgap_kernels import _native, backends
from pgap_kernels.args import PerturbArgs
from pgap_kernels._stream import STREAM_VERSIONS, seed_to_int64
from pgap_kernels.backends.reference import philox
from pgap_kernels.backends.reference.rounding import round_stochastic, rounding_words
from pgap_kernels.testing import assert_lowrank_close

from conftest import OP_CASES, backend_cases, is_triton_interpreter, require

HALF = [torch.bfloat16, torch.float16]
CARRY = (1 << 32) * 4 - 6  # six elements before block 2^32 (a carry between 32-bit halves)
BF16_MAX, F16_MAX = torch.finfo(torch.bfloat16).max, torch.finfo(torch.float16).max


@pytest.fixture(params=backend_cases(include_reference=True))
def device_backend(request):
    device, backend = request.param
    require(device, backend)
    return device, backend


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit, except that NaNs only need to be NaN where expected ones are, and zeros only
    equal in value (the sign of an exact zero sum is not part of the contract)."""
    a, e = actual.detach().cpu(), expected.detach().cpu()
    assert a.dtype == e.dtype and a.shape == e.shape
    nan = torch.isnan(e)
    assert torch.equal(torch.isnan(a), nan), "NaNs differ"
    zero = e == 0
    assert torch.equal(a[zero], e[zero])
    same = bits(a) == bits(e)
    bad = ~(same | nan | zero)
    if bool(bad.any()):
        i = int(bad.view(-1).nonzero()[0])
        raise AssertionError(f"{int(bad.sum())} of {a.numel()} elements differ; first at {i}: "
                             f"{a.view(-1)[i].item()!r} != {e.view(-1)[i].item()!r}")


def rule(v: torch.Tensor, seed: int, key: int, start: int, dtype: torch.dtype) -> torch.Tensor:
    """The rounding of docs/rng.md applied to float32 ``v`` (element l at index start + l)."""
    v = v.detach().cpu().float().contiguous()
    words = rounding_words(seed, key, start, v.numel(), v.device).view(v.shape)
    return round_stochastic(v, words, dtype).to(dtype)


def values(shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def subnormals_work(device: str, backend: str, dtype: torch.dtype) -> bool:
    """False where the backend cannot hold bfloat16 subnormals at all: the Triton interpreter's
    bfloat16 <-> float32 conversions (triton/runtime/interpreter.py, _convert_float) mangle them,
    with rounding to nearest too. Compiled Triton on a GPU converts them exactly."""
    return not (is_triton_interpreter(device, backend) and dtype == torch.bfloat16)


def special(dtype: torch.dtype, subnormals: bool = True) -> torch.Tensor:
    """Values a rounding must get right: subnormals, the smallest normals, the largest finite
    values, negatives, zeros, infinities and NaN. Without ``subnormals`` also without the
    smallest normals, which a perturbation or a decay may take into the subnormals."""
    fi = torch.finfo(dtype)
    tiny = fi.smallest_normal
    sub = [tiny * 2 ** -k * f for k in (1, 3, 7) for f in (1.0, 1.5, -1.25)]  # subnormals of dtype
    sub = sub + [tiny, -tiny] if subnormals else []
    big = [fi.max, -fi.max, fi.max * (1 - fi.eps), fi.max * (1 - 4 * fi.eps), -fi.max * (1 - 2 * fi.eps)]
    return torch.tensor(sub + big + [0.0, -0.0, 1.0, -3.0, float("inf"), float("-inf"),
                                     float("nan")]).to(dtype)


def run(backend, fn, *tensors):
    """``fn`` on clones of ``tensors`` under ``backend``; returns the clones."""
    out = [t.clone() for t in tensors]
    with pk.use_backend(backend):
        fn(*out)
    return out


# -- (0) the rounding words: splitmix64-u16/v2 ----------------------------------------------------

MASK64 = (1 << 64) - 1


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def formula_word(seed: int, key: int, e: int) -> int:
    """docs/rng.md's definition, in Python integers."""
    b, lane = divmod(e, 4)
    base = mix64(seed ^ ((key * 0xD1B54A32D192ED03) & MASK64))
    return (mix64((base + (b + 1) * 0x9E3779B97F4A7C15) & MASK64) >> (16 * lane)) & 0xFFFF


# (rounding seed, key, block, hash of the block): docs/rng.md's test vectors
KNOWN_BLOCKS = [(0, 0, 0, 0xE220A8397B1DCDAF), (1234, 0, 0, 0x7A178106913D296D),
                (1234, 0, 1, 0x95291EE481455C7D), (42, 3, 1, 0x7405B4D8B00CE774),
                ((1 << 64) - 1, (1 << 32) - 1, (1 << 32) - 1, 0x98D9461E36908834),
                ((1 << 64) - 1, (1 << 32) - 1, 1 << 32, 0xF477B1B8395DC2FC),
                (0x0123456789ABCDEF, 7, 250_000_000_000, 0xF01C2D1C6272834B)]


def known_words(seed, key, block, x):
    return [(x >> (16 * lane)) & 0xFFFF for lane in range(4)]


def test_version():
    assert pk.ROUNDING_VERSION == "splitmix64-u16/v2"
    assert "rounding" not in STREAM_VERSIONS  # its keys are the ops' distributions


def test_formula_is_splitmix64():
    """From state 0 the block hashes are SplitMix64's published first outputs."""
    firsts = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    assert [mix64((b * 0x9E3779B97F4A7C15) & MASK64) for b in (1, 2, 3, 4)] == firsts
    for block, x in enumerate(firsts):
        assert [formula_word(0, 0, 4 * block + lane) for lane in range(4)] == known_words(0, 0, block, x)
    for seed, key, block, x in KNOWN_BLOCKS:
        assert [formula_word(seed, key, 4 * block + lane) for lane in range(4)] == \
            known_words(seed, key, block, x)


@pytest.mark.parametrize("impl", ["reference", "native", "triton"])
def test_known_words(impl):
    """Every implementation of the words gives the test vectors, and the formula's words over runs
    that start at every lane and cross block 2^32."""
    cases = [(seed, key, 4 * block, 4) for seed, key, block, _ in KNOWN_BLOCKS]
    cases += [(77, 9, CARRY - 3, 23), ((1 << 64) - 2, 0xFFFFFFFF, 10 ** 12 + 1, 13)]
    got = {c: words_of(impl, *c) for c in cases}
    for (seed, key, block, x), case in zip(KNOWN_BLOCKS, cases):
        assert got[case] == known_words(seed, key, block, x), (impl, seed, key, block)
    for seed, key, start, count in cases:
        assert got[(seed, key, start, count)] == [formula_word(seed, key, start + i) for i in range(count)]


def words_of(impl, seed, key, start, count):
    if impl == "reference":
        return rounding_words(seed, key, start, count, torch.device("cpu")).tolist()
    if impl == "native":
        lib, reason = _native.load()
        if lib is None:
            pytest.skip(reason)
        return list(lib.rounding_words(seed, key, start, count))
    return triton_words(seed, key, start, count)


if importlib.util.find_spec("triton") is not None:  # conftest chose the interpreter if no GPU
    import triton
    import triton.language as tl

    from pgap_kernels.backends.triton._rounding import rounding_block_words, rounding_element_words

    @triton.jit
    def _triton_words(out, by_block, seed_ptr, key, start, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK).to(tl.int64)
        rseed = tl.load(seed_ptr)
        w = rounding_element_words(rseed, start + i, key.to(tl.uint32))
        tl.store(out + i, w.to(tl.int64), mask=i < n)
        w0, w1, w2, w3 = rounding_block_words(rseed, start // 4 + i, key.to(tl.uint32))
        tl.store(by_block + 4 * i, w0.to(tl.int64), mask=4 * i < n + 3)
        tl.store(by_block + 4 * i + 1, w1.to(tl.int64), mask=4 * i < n + 3)
        tl.store(by_block + 4 * i + 2, w2.to(tl.int64), mask=4 * i < n + 3)
        tl.store(by_block + 4 * i + 3, w3.to(tl.int64), mask=4 * i < n + 3)


def triton_words(seed, key, start, count):
    """The words from the Triton helpers (interpreter or GPU): rounding_element_words per element
    and rounding_block_words per block (both must agree)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    require(device, "triton")
    block = triton.next_power_of_2(count + 4)
    out = torch.zeros(block, dtype=torch.int64, device=device)
    by_block = torch.zeros(4 * block, dtype=torch.int64, device=device)
    _triton_words[(1,)](out, by_block, torch.tensor([seed_to_int64(seed)], device=device), key,
                        start, count, BLOCK=block)
    shift = start % 4
    assert by_block[shift:shift + count].tolist() == out[:count].tolist()
    return out[:count].tolist()


def test_rounding_draws_no_philox(monkeypatch):
    """The reference's words and its stochastically rounded perturb_ (called directly, not
    through the dispatcher, whose self-checks need Philox) run with Philox disabled."""
    t = values(50, torch.bfloat16, 3)
    expected = rule(t.float() + 1e-3 * t.float(), 5, 6, 7, torch.bfloat16)
    perturb_group = backends.kernel("reference", backends.PERTURB)  # imported before the patch

    def no_philox(*args, **kwargs):
        raise AssertionError("the rounding words drew Philox")
    monkeypatch.setattr(philox, "philox4x32_10", no_philox)
    monkeypatch.setattr(philox, "block_words", no_philox)
    assert rounding_words(5, 6, 7, 9, torch.device("cpu")).tolist() == [formula_word(5, 6, 7 + i) for i in range(9)]
    args = PerturbArgs([t], [t.clone()], seeds=[], coeffs=[], keys=[6], offsets=[7], decay=1.0,
                       mean_coeff=1e-3, rounding_seed=5)
    perturb_group(args)
    assert_same(t, expected)


def test_words_look_uniform_and_independent():
    """16-bit words: each byte of every lane uniform (chi-square over 256 bins), no correlation
    between neighbouring elements, keys or seeds."""
    n = 1 << 16
    w = rounding_words(1, 2, 3, n, torch.device("cpu"))
    for lane in range(4):
        for byte in (w[lane::4] & 0xFF, w[lane::4] >> 8):
            counts = torch.bincount(byte, minlength=256).double()
            expected = byte.numel() / 256
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            assert chi2 < 255 + 6 * math.sqrt(2 * 255), (lane, chi2)  # ~6 sigma
    u = (w.double() + 0.5) / 65536 - 0.5
    others = [w[1:], rounding_words(1, 3, 3, n, torch.device("cpu")),
              rounding_words(2, 2, 3, n, torch.device("cpu")), rounding_words(1 ^ 0xD1B54A32D192ED03, 3, 3, n, torch.device("cpu"))]
    for other in others:
        v = (other.double() + 0.5) / 65536 - 0.5
        m = min(len(u), len(v))
        corr = float((u[:m] * v[:m]).mean() / (u[:m].std() * v[:m].std()))
        assert abs(corr) < 6 / math.sqrt(m), corr
    assert abs(float(u.mean())) < 6 * math.sqrt(1 / 12 / n)


# Roundings by the rule for given words (docs/rng.md's table): (dtype, v, u16, result; None:
# to nearest)
KNOWN_ROUNDINGS = [(torch.bfloat16, 1 + 2.0 ** -9, 0x3FFF, 1 + 2.0 ** -7),
                   (torch.bfloat16, 1 + 2.0 ** -9, 0x4000, 1.0),
                   (torch.bfloat16, -(3 + 3 * 2.0 ** -8), 0xBFFF, -(3 + 2.0 ** -6)),
                   (torch.float16, 1 + 2.0 ** -12, 0x3FFF, 1 + 2.0 ** -10),
                   (torch.float16, 1 + 2.0 ** -12, 0x4000, 1.0),
                   (torch.float16, 2.0 ** -24 / 3, 21845, 2.0 ** -24),  # frac*2^16 = 21845.33...
                   (torch.float16, 2.0 ** -24 / 3, 21846, 0.0),
                   (torch.float16, 65504 * (1 + 2.0 ** -12), 5, 65504.0)]


@pytest.mark.parametrize("dtype,v,word,result", KNOWN_ROUNDINGS)
def test_known_roundings(dtype, v, word, result):
    got = round_stochastic(torch.tensor([v]), torch.tensor([word]), dtype).to(dtype)
    assert float(got) == result


@pytest.mark.parametrize("dtype", HALF)
def test_every_word_is_an_exact_threshold(device_backend, dtype):
    """Element i gets a value whose frac*2^16 is its own word (rounds down, toward zero) or its
    word + 1 (rounds up): every backend's words and rule, exactly, through lowrank_perturb_
    (decay 0, W = U*1*1: the float32 result is the value itself). bfloat16 just above 1 (or
    below -1), float16 at 16 ulps of its subnormals (2^-20; frac*2^16 is exact there too)."""
    device, backend = device_backend
    m, seed, key, offset = 203, (1 << 64) - 5, 0xFFFFFFFE, CARRY - 100
    lo, ulp = (1.0, 2.0 ** -7) if dtype == torch.bfloat16 else (16 * 2.0 ** -24, 2.0 ** -24)
    xs, want = [], []
    for i in range(m):
        up, sign = i % 2, -1.0 if i % 4 >= 2 else 1.0
        xs.append(sign * (lo + (formula_word(seed, key, offset + i) + up) * ulp / 65536))
        want.append(sign * (lo + up * ulp))
    U = torch.tensor(xs, dtype=torch.float64).float().view(m, 1)
    assert U.double().view(-1).tolist() == xs  # exact in float32
    W = torch.empty(m, 1, dtype=dtype, device=device)
    one = torch.ones(1, 1, device=device)
    with pk.use_backend(backend):
        pk.lowrank_perturb_(W, U.to(device), one, one, 1.0, decay=0.0, keys=[key], offsets=[offset],
                            rounding="stochastic", rounding_seed=seed)
    assert W.double().cpu().view(-1).tolist() == want


# -- (1) bit for bit with reference, where every backend computes the same float32 results ----

@pytest.mark.parametrize("dtype", HALF)
def test_perturb_matches_reference(device_backend, dtype):
    """No seeds: the float32 result t + c*mean is one product and one sum, the same everywhere,
    so the rounded bits must be the reference's. Mean values scale with t, so subnormal and
    near-maximal results come out off the grid."""
    device, backend = device_backend
    subnormals = subnormals_work(device, backend, dtype)
    t = torch.cat([special(dtype, subnormals), values(400, dtype, 1, 3.0)])
    t = torch.cat([t, t * 2.0 ** -10]).to(device)  # normal and small (fp16 subnormal) magnitudes
    mean = (t.float() * values(t.numel(), torch.float32, 2).to(device)).nan_to_num(0.0, 0.0, 0.0).to(dtype)
    kwargs = dict(keys=[0xFFFFFFFF], offsets=[CARRY], mean=[mean], mean_coeff=0.0123,
                  rounding="stochastic", rounding_seed=(1 << 64) - 2)
    (actual,) = run(backend, lambda x: pk.perturb_(x, [], [], **kwargs), t)
    (expected,) = run("reference", lambda x: pk.perturb_(x, [], [], **kwargs), t)
    assert_same(actual, expected)
    changed = (expected.float() != (t.float() + 0.0123 * mean.float()).to(dtype).float())
    assert int(changed.sum()) > t.numel() // 5  # it did not round to nearest


def exact_lowrank(dtype, m, n, scale_exp, w_scale, seed):
    """W (m x n, dtype) and float32 U, Z, V whose scaled product is exact in float32 (small
    integers times 2^scale_exp), so W + scale*U@Z@V.T is one rounding on every backend."""
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(m, n, generator=g) * w_scale).to(dtype)
    U = torch.randint(-3, 4, (m, 2), generator=g).float()
    Z = torch.randint(-2, 3, (2, 2), generator=g).float()
    V = torch.randint(-3, 4, (n, 2), generator=g).float()
    return W, U, Z, V, 2.0 ** scale_exp


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("region", ["normal", "subnormal"])
def test_lowrank_matches_reference(device_backend, dtype, region):
    device, backend = device_backend
    subnormals = subnormals_work(device, backend, dtype)
    if region == "normal":
        W, U, Z, V, scale = exact_lowrank(dtype, 21, 19, -10, 1.0, 3)
        W.view(-1)[:len(special(dtype, subnormals))] = special(dtype, subnormals)
    elif not subnormals:
        pytest.skip("the Triton interpreter cannot hold bfloat16 subnormals")
    else:  # results in the target's subnormal range
        tiny_exp = -133 if dtype == torch.bfloat16 else -24
        W, U, Z, V, scale = exact_lowrank(dtype, 21, 19, tiny_exp - 8, 2.0 ** (tiny_exp + 4), 4)
    W, U, Z, V = (x.to(device) for x in (W, U, Z, V))
    kwargs = dict(rounding="stochastic", rounding_seed=77, keys=[9], offsets=[CARRY])
    (actual,) = run(backend, lambda w: pk.lowrank_perturb_(w, U, Z, V, scale, **kwargs), W)
    (expected,) = run("reference", lambda w: pk.lowrank_perturb_(w, U, Z, V, scale, **kwargs), W)
    assert_same(actual, expected)


@pytest.mark.parametrize("dtype", HALF)
def test_subspace_matches_reference(device_backend, dtype):
    """Zero coefficients: the result is decay*W (one rounding in float32) on every backend."""
    device, backend = device_backend
    W = torch.cat([special(dtype, subnormals_work(device, backend, dtype)),
                   values(17 * 19, dtype, 5, 2.0)])[:17 * 19].view(17, 19)
    V = values((19, 3), torch.float32, 6).to(device)
    W = W.to(device)
    kwargs = dict(keys=[5], offsets=[3 * 2], decay=0.999, rounding="stochastic", rounding_seed=8)
    (actual,) = run(backend, lambda w: pk.subspace_perturb_(w, V, 4, 0.0, **kwargs), W)
    (expected,) = run("reference", lambda w: pk.subspace_perturb_(w, V, 4, 0.0, **kwargs), W)
    assert_same(actual, expected)


# -- (1') every backend applies the rule to its own float32 results ---------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_perturb_follows_the_rule(device_backend, dtype):
    device, backend = device_backend
    t = values(1001, dtype, 7, 2.0).to(device)
    kwargs = dict(keys=[3], offsets=[CARRY], decay=0.9)
    (v,) = run(backend, lambda x: pk.perturb_(x, [5, 6], [0.3, -0.01], **kwargs), t.float())
    (sr,) = run(backend, lambda x: pk.perturb_(x, [5, 6], [0.3, -0.01], rounding="stochastic",
                                               rounding_seed=99, **kwargs), t)
    assert_same(sr, rule(v, 99, 3, CARRY, dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_lowrank_follows_the_rule(device_backend, dtype):
    device, backend = device_backend
    W, U, Z, V = values((37, 29), dtype, 8).to(device), *(values(s, torch.float32, i).to(device)
                                                        for i, s in enumerate([(37, 3), (3, 4), (29, 4)]))
    (v,) = run(backend, lambda w: pk.lowrank_perturb_(w, U, Z, V, 0.01, decay=0.9), W.float())
    (sr,) = run(backend, lambda w: pk.lowrank_perturb_(w, U, Z, V, 0.01, decay=0.9, keys=[5],
                                                       offsets=[100], rounding="stochastic",
                                                       rounding_seed=7), W)
    assert_same(sr, rule(v, 7, 5, 100, dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_subspace_follows_the_rule(device_backend, dtype):
    """Two matrices (different keys and rounding indices): W_p[i, j] rounds at
    (offsets[p]/r + i)*n + j."""
    device, backend = device_backend
    Ws = [values((37, 29), dtype, 9).to(device), values((6, 10), dtype, 10).to(device)]
    Vs = [values((29, 3), torch.float32, 11).to(device), values((10, 5), torch.float32, 12).to(device)]
    kwargs = dict(keys=[4, 0xFFFFFFFF], offsets=[3 * 6, 5 * 1000], decay=0.9)
    v = run(backend, lambda *w: pk.subspace_perturb_(list(w), Vs, [5], [0.01], **kwargs),
            *[w.float() for w in Ws])
    sr = run(backend, lambda *w: pk.subspace_perturb_(list(w), Vs, [5], [0.01], rounding="stochastic",
                                                      rounding_seed=7, **kwargs), *Ws)
    assert_same(sr[0], rule(v[0], 7, 4, 6 * 29, dtype))
    assert_same(sr[1], rule(v[1], 7, 0xFFFFFFFF, 1000 * 10, dtype))


def on_every_host_isa(check) -> None:
    """check(isa) under each host instruction-set build of native (_native's set_host_isa), the
    selected one restored after; skips without the native library."""
    lib, reason = _native.load()
    if lib is None:
        pytest.skip(reason)
    info = lib.build_info()
    try:
        for isa in info["host_isas"]:
            lib.set_host_isa(isa)
            check(isa)
    finally:
        lib.set_host_isa(info["host_isa"])


# (m, n): partial tiles only; full and partial micro-tiles of the AVX-512 (12 x 32) and AVX2
# (6 x 16) builds; odd n, so that rows start at every rounding-index residue mod 4.
TILE_SHAPES = [(1, 1), (3, 3), (24, 64), (100, 67), (13, 4097)]


@pytest.mark.parametrize("dtype", HALF)
def test_native_tiles_follow_the_rule_on_every_host_isa(dtype):
    """lowrank_perturb_ and subspace_perturb_ of native in each host instruction-set build (the
    vectorized full-tile stores and the scalar rest), with special values in W and decay 0 (W
    not read), 0.9 and 1: the rule applied to the same build's float32 results."""
    def check(isa):
        for i, (m, n) in enumerate(TILE_SHAPES):
            W = values((m, n), dtype, 30 + i, 4.0)
            sp = special(dtype)[:len(W.view(-1)[::7])]
            W.view(-1)[::7][:len(sp)] = sp
            U, Z, V = (values(s, torch.float32, 40 + 3 * i + k)
                       for k, s in enumerate([(m, 3), (3, 3), (n, 3)]))
            big = torch.finfo(dtype).max * torch.finfo(dtype).eps / 8  # W = +-max: past it
            for decay in (0.0, 0.9, 1.0):
                cases = {  # name: (op, rounding index of W's element 0)
                    "lowrank": (lambda w, **r: pk.lowrank_perturb_(
                        w, U, Z, V, 0.01, decay=decay, keys=[3], offsets=[CARRY + i], **r), CARRY + i),
                    "lowrank near max": (lambda w, **r: pk.lowrank_perturb_(
                        w, U, Z, V, big, decay=decay, keys=[3], offsets=[i], **r), i),
                    "subspace": (lambda w, **r: pk.subspace_perturb_(
                        w, V, 9, 0.01, decay=decay, keys=[3], offsets=[3 * (5 + i)], **r), (5 + i) * n)}
                for name, (op, start) in cases.items():
                    (v,) = run("native", op, W.float())
                    (sr,) = run("native", lambda w: op(w, rounding="stochastic", rounding_seed=7), W)
                    try:
                        assert_same(sr, rule(v, 7, 3, start, dtype))
                    except AssertionError as e:
                        raise AssertionError(f"{isa}, {name} {m}x{n}, decay {decay}: {e}") from None
    on_every_host_isa(check)


# Sizes around the vector rows (AVX-512 32, AVX2 16 elements) and the chunks (4096 elements), and
# rounding indices of element 0 at every residue mod 4 (the scalar head before the first row).
PERTURB_SIZES = [1, 3, 4, 33, 4097, 2 * 4096 + 45]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_native_perturb_follows_the_rule_on_every_host_isa(dtype, distribution):
    """perturb_ of native in each host instruction-set build (the rows rounded in vectors with
    their words hashed in registers, the scalar head and rest), with special values in t and
    mean, with and without mean, decay 0 (t not read), 0.9 and 1: the rule applied to the same
    build's float32 results."""
    def check(isa):
        for i, n in enumerate(PERTURB_SIZES):
            t = values(n, dtype, 50 + i, 4.0)
            sp = special(dtype)[:len(t[::5])]
            t[::5][:len(sp)] = sp
            mean = values(n, dtype, 60 + i, 2.0)
            mean[1::7][:len(sp)] = sp.flip(0)[:len(mean[1::7])]
            for offset, use_mean, decay in [(i % 4, False, 1.0), (CARRY + (i + 1) % 4, True, 0.9),
                                            ((i + 2) % 4 + 4096 * 3, True, 0.0),
                                            (4096 * 5 + (i + 3) % 4, False, 0.0)]:
                kwargs = dict(keys=[3], offsets=[offset], decay=decay, distribution=distribution,
                              mean=[mean] if use_mean else None, mean_coeff=0.25 if use_mean else 0.0)
                fkwargs = dict(kwargs, mean=[mean.float()] if use_mean else None)
                (v,) = run("native", lambda x: pk.perturb_(x, [5, 6], [0.3, -0.01], **fkwargs), t.float())
                (sr,) = run("native", lambda x: pk.perturb_(x, [5, 6], [0.3, -0.01], rounding="stochastic",
                                                            rounding_seed=7, **kwargs), t)
                try:
                    assert_same(sr, rule(v, 7, 3, offset, dtype))
                except AssertionError as e:
                    raise AssertionError(f"{isa}, n {n}, offset {offset}, mean {use_mean}, "
                                         f"decay {decay}: {e}") from None
    on_every_host_isa(check)


# Coefficients c for v = c * m over every float16 m: just above and below 1 (v between float16
# values everywhere, above 65504 from m = 65504 on, around 2^-14 and inside the subnormals), a
# value with a long mantissa, and ones that move normals into the subnormal range, float32
# subnormals included.
F16_SWEEP_COEFFS = [1 + 2.0 ** -12 + 2.0 ** -20, 1 - 2.0 ** -13 - 2.0 ** -21, 0.3,
                    1.1 * 2.0 ** -12, 0.7 * 2.0 ** -20, 1.3 * 2.0 ** -118]


def test_native_perturb_f16_sweep_follows_the_rule_on_every_host_isa():
    """float16 stochastic rounding of v = c * m (decay 0, mean m, coefficient 0 on z) for every
    float16 bit pattern m, in order (rows of one binade) and shuffled (rows mixing float16
    normals, subnormal targets, zeros, values near and above 65504, inf and NaN), in each host
    build: the rule applied to the float32 values."""
    m = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    shuffled = m[torch.randperm(m.numel(), generator=torch.Generator().manual_seed(3))]

    def check(isa):
        for order, mean in [("in order", m), ("shuffled", shuffled)]:
            for c in F16_SWEEP_COEFFS:
                kwargs = dict(keys=[2], offsets=[1], decay=0.0, mean=[mean], mean_coeff=c,
                              distribution="rademacher")
                fkwargs = dict(kwargs, mean=[mean.float()])
                (v,) = run("native", lambda x: pk.perturb_(x, [5], [0.0], **fkwargs),
                           torch.zeros(m.numel()))
                (sr,) = run("native", lambda x: pk.perturb_(x, [5], [0.0], rounding="stochastic",
                                                            rounding_seed=9, **kwargs),
                            torch.zeros(m.numel(), dtype=torch.float16))
                try:
                    assert_same(sr, rule(v, 9, 2, 1, torch.float16))
                except AssertionError as e:
                    raise AssertionError(f"{isa}, {order}, c {c!r}: {e}") from None
    on_every_host_isa(check)


# -- float16 rounded to nearest in every host build: static_cast<_Float16>(float)'s bits ------

def f16_nearest_bits(v: torch.Tensor) -> torch.Tensor:
    """The float16 bits of float32 ``v`` rounded to nearest even as C's (_Float16) conversion and
    F16C's vcvtps2ph give them, in integer arithmetic (not torch's conversion): overflow to inf
    from 65520, subnormals, and a NaN quiet with its payload's high 10 bits."""
    u = v.detach().cpu().float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign, a = (u >> 16) & 0x8000, u & 0x7FFFFFFF
    # normal results (|v| >= 2^-14): rebias the exponent, drop 13 mantissa bits, ties to even
    h, rem = (a - 0x38000000) >> 13, a & 0x1FFF
    normal = h + ((rem > 0x1000) | ((rem == 0x1000) & (h & 1 == 1))).long()
    # subnormal results: |v| * 2^24 = mant * 2^(e - 126) rounded to an integer, ties to even
    e = a >> 23
    mant = torch.where(e > 0, (a & 0x7FFFFF) | 0x800000, a)
    shift = (126 - e).clamp(1, 40)
    q, rem = mant >> shift, mant & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    sub = q + ((rem > half) | ((rem == half) & (q & 1 == 1))).long()
    h = torch.where(a >= 0x38800000, normal, sub)
    h = torch.where(a >= 0x477FF000, torch.full_like(h, 0x7C00), h)  # 65520 and up: inf
    h = torch.where(a > 0x7F800000, 0x7E00 | ((a >> 13) & 0x3FF), h)  # NaN
    return (sign | h).to(torch.int32).to(torch.int16)


def f32_from_bits(words) -> torch.Tensor:
    return torch.tensor([w - (1 << 32) if w >= 1 << 31 else w for w in words],
                        dtype=torch.int32).view(torch.float32)


def f16_from_bits(words) -> torch.Tensor:
    return torch.tensor([w - (1 << 16) if w >= 1 << 15 else w for w in words],
                        dtype=torch.int16).view(torch.float16)


# float32 values float16 must round right: zeros, float32 and float16 subnormals, ties of both
# (2^-25 ties to 0, 3*2^-25 to 2^-23, the largest subnormal + half an ulp to 2^-14), 65504 and
# the values around 65520 (the first to round to inf), ties in [1, 2), inf, NaNs with payloads
# (quiet and signalling, both signs).
F16_ROUNDING_CASES = torch.cat([
    f32_from_bits([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00400000, 0x7F800000,
                   0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FA00000, 0x7FFFFFFF,
                   0xFFBFE000, 0x7F802000, 0x7F7FFFFF]),
    torch.tensor([2.0 ** -24, 2.0 ** -25, -2.0 ** -25, 2.0 ** -25 * (1 + 2 ** -23), 3 * 2.0 ** -25,
                  5 * 2.0 ** -25, 2.0 ** -26, 2.0 ** -14 - 2.0 ** -25, 2.0 ** -14 - 2.0 ** -24,
                  2.0 ** -14, 2.0 ** -15 * 1.5, 65504.0, -65504.0, 65519.99609375, 65520.0,
                  -65520.0, 65520.00390625, 65535.0, 65536.0, 1e10, 1 + 2.0 ** -11,
                  1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -23, -(1 + 2.0 ** -11), 2049.0,
                  2051.0, 4097.0, 0.1, -1 / 3], dtype=torch.float32)])


def test_f16_nearest_bits_is_the_c_conversion():
    """The reference above on its own cases, against known float16 bits."""
    got = f16_nearest_bits(F16_ROUNDING_CASES).tolist()
    expected = [0x0000, 0x8000, 0x0000, 0x8000, 0x0000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7E00,
                0x7F00, 0x7FFF, 0xFFFF, 0x7E01, 0x7C00,
                0x0001, 0x0000, 0x8000, 0x0001, 0x0002, 0x0002, 0x0000, 0x0400, 0x03FF, 0x0400,
                0x0300, 0x7BFF, 0xFBFF, 0x7BFF, 0x7C00, 0xFC00, 0x7C00, 0x7C00, 0x7C00, 0x7C00,
                0x3C00, 0x3C02, 0x3C01, 0xBC00, 0x6800, 0x6802, 0x6C00, 0x2E66, 0xB555]
    assert [g & 0xFFFF for g in got] == expected
    finite = F16_ROUNDING_CASES.abs() < 65520
    assert torch.equal(f16_from_bits(expected)[finite], F16_ROUNDING_CASES[finite].half())


def f16_to_float(h: torch.Tensor) -> torch.Tensor:
    """float16 -> float32 exactly, NaN payloads kept (quieted, as vcvtph2ps does): torch's CPU
    conversion maps NaNs to 0x7FFFFFFF in its scalar path."""
    u = h.detach().cpu().contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    nan = (u & 0x7FFF) > 0x7C00
    words = ((u & 0x8000) << 16) | 0x7FC00000 | ((u & 0x3FF) << 13)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return torch.where(nan, words.view(torch.float32), h.float())


def assert_f16_nearest(actual: torch.Tensor, v: torch.Tensor, what: str) -> None:
    """actual (float16) == v (float32) rounded to nearest, bit for bit: NaN payloads and the
    signs of zeros included."""
    got, want = bits(actual).view(-1), f16_nearest_bits(v).view(-1)
    bad = (got != want).nonzero()
    if len(bad):
        i = int(bad[0])
        raise AssertionError(f"{what}: {len(bad)} of {got.numel()} differ; first at {i}: float32 "
                             f"{v.view(-1)[i].item()!r} -> {int(got[i]) & 0xFFFF:#06x}, "
                             f"expected {int(want[i]) & 0xFFFF:#06x}")


def at_odd_offset(x: torch.Tensor) -> torch.Tensor:
    """A copy of x that starts one element into its storage (unaligned rows)."""
    buf = torch.empty(x.numel() + 1, dtype=x.dtype)
    out = buf[1:].view(x.shape)
    out.copy_(x)
    return out


def f16_special_inputs(n: int, seed: int):
    """(t, mean) float16 of n elements: random values, with pairs at the front whose t +
    0.25*mean hits float16's hard cases (ties, 65520, subnormals) and NaNs with payloads."""
    t, mean = values(n, torch.float16, seed, 4.0), values(n, torch.float16, seed + 1, 2.0)
    pairs = [(65504.0, 63.96875), (65504.0, 64.0), (65504.0, 64.0625), (-65504.0, -64.0),
             (1.0, 2.0 ** -9), (1 + 2.0 ** -10, 2.0 ** -9), (1.0, 3 * 2.0 ** -9),
             (2.0 ** -24, 2.0 ** -24), (2.0 ** -24, 2.0 ** -23), (3 * 2.0 ** -24, 2.0 ** -23),
             (2.0 ** -14 - 2.0 ** -24, 2.0 ** -23), (0.0, 2.0 ** -24), (-0.0, -0.0),
             (float("inf"), float("-inf")), (65504.0, 65504.0), (-2.0 ** -24, 2.0 ** -22)]
    nan_bits = [0x7C01, 0x7E55, 0xFE01, 0x7D00, 0xFFFF]
    ts = torch.cat([torch.tensor([p[0] for p in pairs]).half(), f16_from_bits(nan_bits)])
    ms = torch.cat([torch.tensor([p[1] for p in pairs]).half(),
                    torch.ones(len(nan_bits), dtype=torch.float16)])
    k = min(n, len(ts))
    t[:k], mean[:k] = ts[:k], ms[:k]
    mean[k:][::3] = f16_from_bits([0x7C01, 0xFD23, 0x0001, 0x8000] * n)[:len(mean[k:][::3])]
    return t, mean


F16_SIZES = [1, 3, 4097]


def test_native_f16_nearest_on_every_host_isa():
    """float16 rounded to nearest in each host instruction-set build of native (the vectorized
    F16C stores and the scalar rest): perturb_ (seeds or none, mean or none, decays 1, 0.9, 0 and
    2^-20 into the subnormals), perturbed_many and lowrank_perturb_ (any float32 value: the
    cases of F16_ROUNDING_CASES) and subspace_perturb_, on sizes 1, 3 and 4097, odd stream
    offsets and tensors at odd storage offsets: bit for bit the C conversion of the same
    build's float32 results (NaN payloads and zero signs included)."""
    def check(isa):
        for i, n in enumerate(F16_SIZES):
            t, mean = f16_special_inputs(n, 70 + i)
            for seeds, coeffs, use_mean, decay, dist, offset in [
                    ([], [], True, 1.0, "gaussian", 1), ([5, 6], [0.3, -0.01], True, 0.9, "gaussian", CARRY + 1),
                    ([5], [0.01], False, 0.0, "rademacher", 4096 * 3 + 3),
                    ([7], [2.0 ** -20], True, 2.0 ** -20, "gaussian", 5),
                    ([8], [0.5], False, 1.0, "rademacher", 7)]:
                kw = dict(keys=[3], offsets=[offset], decay=decay, distribution=dist,
                          mean_coeff=0.25 if use_mean else 0.0)
                (v,) = run("native", lambda x: pk.perturb_(
                    x, seeds, coeffs, mean=[f16_to_float(mean)] if use_mean else None, **kw),
                    f16_to_float(t))
                (h,) = run("native", lambda x: pk.perturb_(
                    x, seeds, coeffs, mean=[at_odd_offset(mean)] if use_mean else None, **kw),
                    at_odd_offset(t))
                assert_f16_nearest(h, v, f"{isa}, perturb_ n {n}, offset {offset}, decay {decay}, "
                                         f"mean {use_mean}, {dist}")
            # perturbed_many: two tensors at odd storage offsets, out too
            srcs = [at_odd_offset(t), at_odd_offset(mean)]
            with pk.use_backend("native"):
                v = pk.perturbed_many([f16_to_float(s) for s in srcs], [9], [0.05], keys=[1, 2],
                                      offsets=[2 * i + 1, 3],
                                      mean=[f16_to_float(s) for s in srcs[::-1]],
                                      mean_coeff=0.25)
                h = pk.perturbed_many(srcs, [9], [0.05], keys=[1, 2], offsets=[2 * i + 1, 3],
                                      mean=srcs[::-1], mean_coeff=0.25,
                                      out=[at_odd_offset(torch.zeros_like(s)) for s in srcs])
            for p in range(2):
                assert_f16_nearest(h[p], v[p], f"{isa}, perturbed_many n {n}, tensor {p}")
        # lowrank_perturb_: W <- U @ [[1]] @ V.T, U the cases and V ones (decay 0), or
        # decay*W + 0.01*U@Z@V.T; TILE_SHAPES has full and partial micro-tiles
        for i, (m, n) in enumerate(TILE_SHAPES):
            cases = F16_ROUNDING_CASES.repeat(m // len(F16_ROUNDING_CASES) + 1)[:m]
            W = at_odd_offset(values((m, n), torch.float16, 80 + i, 4.0))
            W.view(-1)[:len(F16_ROUNDING_CASES)] = F16_ROUNDING_CASES.half()[:W.numel()]
            U, Z, V = (values(s, torch.float32, 90 + 3 * i + k)
                       for k, s in enumerate([(m, 3), (3, 3), (n, 3)]))
            ops = {"lowrank cases": lambda w: pk.lowrank_perturb_(
                       w, cases.view(m, 1), torch.ones(1, 1), torch.ones(n, 1), 1.0, decay=0.0),
                   "lowrank": lambda w: pk.lowrank_perturb_(w, U, Z, V, 0.01, decay=0.9),
                   "lowrank decay 1": lambda w: pk.lowrank_perturb_(w, U, Z, V, 2.0 ** -12),
                   "subspace": lambda w: pk.subspace_perturb_(
                       w, V, 9, 0.01, decay=0.9, keys=[3], offsets=[3 * (i + 1)]),
                   "subspace subnormal": lambda w: pk.subspace_perturb_(
                       w, V, 9, 2.0 ** -20, decay=2.0 ** -20, keys=[3], offsets=[3])}
            for name, op in ops.items():
                (v,) = run("native", op, f16_to_float(W))
                (h,) = run("native", op, W)
                assert_f16_nearest(h, v, f"{isa}, {name} {m}x{n}")
    on_every_host_isa(check)


# -- (2) determinism ---------------------------------------------------------------------------

def test_same_call_same_bits_other_seed_other_bits(device_backend):
    device, backend = device_backend
    t = values(500, torch.bfloat16, 13).to(device)

    def sr(rseed, **kw):
        (x,) = run(backend, lambda y: pk.perturb_(y, 21, 1e-2, rounding="stochastic",
                                                  rounding_seed=rseed, **kw), t)
        return x
    assert torch.equal(bits(sr(1)), bits(sr(1)))
    assert not torch.equal(bits(sr(1)), bits(sr(2)))
    assert torch.equal(bits(sr(None)), bits(sr(21)))  # the default is seeds[0]
    assert not torch.equal(bits(sr(1)), bits(sr(1, keys=[1])))  # the key takes part


# -- (3) a shard rounds as the same rows of the whole --------------------------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_sharding_invariance(device_backend, dtype):
    device, backend = device_backend
    cuts = [(0, 3), (3, 10), (10, 23)]
    # perturb_: a flat shard at its offset
    t = values(23 * 7, dtype, 14).to(device)
    sr = dict(rounding="stochastic", rounding_seed=5)
    (whole,) = run(backend, lambda x: pk.perturb_(x, [1, 2], [0.1, 0.2], keys=[3], offsets=[CARRY], **sr), t)
    for lo, hi in cuts:
        (part,) = run(backend, lambda x: pk.perturb_(x, [1, 2], [0.1, 0.2], keys=[3],
                                                     offsets=[CARRY + lo * 7], **sr), t[lo * 7:hi * 7])
        assert_same(part, whole[lo * 7:hi * 7])
    # subspace_perturb_: a row shard at offset i0*r rounds at the indices of its rows in the
    # whole matrix; its float32 values are those of the whole in native, cuda and compiled
    # triton (the reference's torch.mm and the Triton interpreter's tl.dot, NumPy's matmul, may
    # sum a shard in another order, docs/subspace.md "Sharding"; then a rounding may differ)
    W, V = values((23, 7), dtype, 15).to(device), values((7, 3), torch.float32, 16).to(device)
    (whole,) = run(backend, lambda w: pk.subspace_perturb_(w, V, 9, 0.05, keys=[2], offsets=[3 * 4], **sr), W)
    for lo, hi in cuts:
        op = lambda w, **r: pk.subspace_perturb_(w, V, 9, 0.05, keys=[2], offsets=[3 * (4 + lo)], **r)  # noqa: E731
        (part,) = run(backend, lambda w: op(w, **sr), W[lo:hi])
        (v,) = run(backend, op, W[lo:hi].float())
        assert_same(part, rule(v, 5, 2, (4 + lo) * 7, dtype))
        if backend == "reference" or is_triton_interpreter(device, backend):
            assert_lowrank_close(part, whole[lo:hi], 1.0)  # one rounding apart at most
        else:
            assert_same(part, whole[lo:hi])
    # lowrank_perturb_: a row shard (U's rows) at offset i0*n, with a product exact in float32
    W, U, Z, Vl, scale = (x.to(device) if isinstance(x, torch.Tensor) else x
                          for x in exact_lowrank(dtype, 23, 7, -10, 1.0, 17))
    (whole,) = run(backend, lambda w: pk.lowrank_perturb_(w, U, Z, Vl, scale, keys=[6], offsets=[CARRY], **sr), W)
    for lo, hi in cuts:
        (part,) = run(backend, lambda w: pk.lowrank_perturb_(w, U[lo:hi], Z, Vl, scale, keys=[6],
                                                             offsets=[CARRY + lo * 7], **sr), W[lo:hi])
        assert_same(part, whole[lo:hi])


# -- (4) unbiased: E[SR(x)] = x ------------------------------------------------------------------

def unbiased_cases(dtype):
    """(name, lo, ulp, fractions): x = lo + f*ulp (sign of lo) lies between the neighbours lo and
    lo + ulp; every x is exact in float32."""
    fractions = [0.5, 0.25, 0.75, 1 / 3, 0.01, 0.99]
    if dtype == torch.bfloat16:
        return [("normal", 1.5, 2.0 ** -7, fractions), ("negative", -1.5, 2.0 ** -7, fractions),
                ("subnormal", 5 * 2.0 ** -133, 2.0 ** -133, [0.5, 0.25, 0.75, 0.125, 0.875]),
                ("largest", BF16_MAX - 2.0 ** 120, 2.0 ** 120, fractions)]
    return [("normal", 1.5, 2.0 ** -10, fractions), ("negative", -1.5, 2.0 ** -10, fractions),
            ("subnormal", 7 * 2.0 ** -24, 2.0 ** -24, fractions),
            ("below 2^-25", 0.0, 2.0 ** -24, [0.1, 1 / 3, 0.49]),
            ("largest", F16_MAX - 32.0, 32.0, fractions)]


@pytest.mark.parametrize("dtype", HALF)
def test_unbiased(device_backend, dtype):
    """For every x, the fraction of samples rounded up (away from zero) is within 5 standard
    errors (sqrt(p(1-p)/N), plus 1/N) of x's distance from its lower neighbour in ulps. The
    samples are N = n columns x seeds rounding seeds of a rank-1 lowrank_perturb_ whose float32
    result is exactly x; the bits are deterministic, so this test cannot flake."""
    device, backend = device_backend
    n, seeds = (256, 2) if is_triton_interpreter(device, backend) else (1024, 4)
    xs, expected = [], []
    for name, lo, ulp, fractions in unbiased_cases(dtype):
        if name == "subnormal" and not subnormals_work(device, backend, dtype):
            continue
        for f in fractions:
            x = torch.tensor(lo + math.copysign(f * ulp, lo or 1.0), dtype=torch.float32)
            xs.append(x)
            expected.append((lo, ulp, (abs(float(x)) - abs(lo)) / ulp))
    U = torch.stack(xs).view(-1, 1).to(device)
    Z, V = torch.ones(1, 1, device=device), torch.ones(n, 1, device=device)
    ups = torch.zeros(len(xs), dtype=torch.float64)
    for s in range(seeds):
        W = torch.empty(len(xs), n, dtype=dtype, device=device)
        with pk.use_backend(backend):
            pk.lowrank_perturb_(W, U, Z, V, 1.0, decay=0.0, rounding="stochastic", rounding_seed=1000 + s)
        w = W.double().cpu()
        for i, (lo, ulp, _) in enumerate(expected):
            assert bool(((w[i] == lo) | (w[i] == lo + math.copysign(ulp, lo or 1.0))).all()), \
                f"x {float(xs[i])!r} rounded off its two neighbours"
            ups[i] += float((w[i] != lo).sum())
    total = n * seeds
    for i, (lo, ulp, p) in enumerate(expected):
        p_hat = float(ups[i]) / total
        bound = 5 * math.sqrt(p * (1 - p) / total) + 1.0 / total
        assert abs(p_hat - p) <= bound, (f"x = {float(xs[i])!r}: rounded up {p_hat:.4f} of the time, "
                                         f"expected {p:.4f} +- {bound:.4f}")


def test_unbiased_through_perturb_(device_backend):
    """The same through perturb_: t + mean_coeff*mean = 1 + 0.3 ulp in bfloat16."""
    device, backend = device_backend
    n = 512 if is_triton_interpreter(device, backend) else 8192
    one = torch.ones(n, dtype=torch.bfloat16, device=device)
    (x,) = run(backend, lambda y: pk.perturb_(y, [], [], mean=[one], mean_coeff=0.3 * 2.0 ** -7,
                                              rounding="stochastic", rounding_seed=3), one)
    p_hat = float((x.float() != 1.0).double().mean())
    assert abs(p_hat - 0.3) <= 5 * math.sqrt(0.3 * 0.7 / n) + 1.0 / n


# -- (5) rounding="nearest" is the round to nearest of before --------------------------------

def _hash(t: torch.Tensor) -> str:
    return hashlib.sha256(bits(t).numpy().tobytes()).hexdigest()[:16]


# perturb_ results of this package before stochastic rounding existed (native; the reference
# backend gave the same bits on the machine that recorded them)
NEAREST_GOLDEN = {torch.bfloat16: "afff4d0eceac5ace", torch.float16: "5fc3b4812471c4ef"}


@pytest.mark.parametrize("dtype", HALF)
def test_nearest_bits_unchanged(dtype):
    t = torch.randn(1000, generator=torch.Generator().manual_seed(123)).to(dtype)
    for kwargs in ({}, {"rounding": "nearest"}, {"rounding": "nearest", "rounding_seed": 5}):
        x = t.clone()
        with pk.use_backend("native"):
            pk.perturb_(x, [5, 6], [1e-2, -3e-3], keys=[7], offsets=[(1 << 34) - 10], decay=0.999, **kwargs)
        assert _hash(x) == NEAREST_GOLDEN[dtype], kwargs


@pytest.mark.parametrize("dtype", HALF)
def test_nearest_is_the_float32_result_rounded_to_nearest(device_backend, dtype):
    device, backend = device_backend
    if is_triton_interpreter(device, backend) and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter converts float32 to bfloat16 by truncation "
                    "(triton/runtime/interpreter.py); compiled Triton rounds to nearest")
    W, V = values((23, 17), dtype, 20).to(device), values((17, 3), torch.float32, 21).to(device)
    U, Z = values((23, 2), torch.float32, 22).to(device), values((2, 3), torch.float32, 23).to(device)
    ops = [lambda w: pk.perturb_(w, [3, 4], [0.1, -0.2], decay=0.9, rounding="nearest"),
           lambda w: pk.lowrank_perturb_(w, U, Z, V, 0.1, decay=0.9, rounding="nearest"),
           lambda w: pk.subspace_perturb_(w, V, 3, 0.1, decay=0.9, rounding="nearest")]
    for op in ops:
        (near,) = run(backend, op, W)
        (v,) = run(backend, op, W.float())
        assert_same(near, v.to(dtype))


def test_float32_is_not_rounded(device_backend):
    device, backend = device_backend
    W, V = values((23, 17), torch.float32, 24).to(device), values((17, 3), torch.float32, 25).to(device)
    U, Z = values((23, 2), torch.float32, 26).to(device), values((2, 3), torch.float32, 27).to(device)
    for op in [lambda w, **r: pk.perturb_(w, [3, 4], [0.1, -0.2], decay=0.9, **r),
               lambda w, **r: pk.lowrank_perturb_(w, U, Z, V, 0.1, decay=0.9, **r),
               lambda w, **r: pk.subspace_perturb_(w, V, 3, 0.1, decay=0.9, **r)]:
        (near,) = run(backend, op, W)
        (sr,) = run(backend, lambda w: op(w, rounding="stochastic", rounding_seed=11), W)
        assert torch.equal(bits(near), bits(sr))


# -- (6) bad arguments raise before anything is written ---------------------------------------

def test_bad_rounding_arguments_leave_tensors_untouched():
    W = values((6, 5), torch.bfloat16, 30)
    U, Z, V = values((6, 2), seed=31), values((2, 2), seed=32), values((5, 2), seed=33)
    before = W.clone()
    ops = {"perturb_": lambda **r: pk.perturb_(W, 1, 0.1, **r),
           "lowrank_perturb_": lambda **r: pk.lowrank_perturb_(W, U, Z, V, 0.1, **r),
           "subspace_perturb_": lambda **r: pk.subspace_perturb_(W, V, 1, 0.1, **r)}
    bad = [(ValueError, r"rounding must be one of 'nearest', 'stochastic'; got 'Stochastic'",
            dict(rounding="Stochastic", rounding_seed=1)),
           (ValueError, "rounding must be one of", dict(rounding=None, rounding_seed=1)),
           (ValueError, "rounding must be one of", dict(rounding=1, rounding_seed=1)),
           (ValueError, r"rounding_seed must lie in \[0, 18446744073709551616\)",
            dict(rounding="stochastic", rounding_seed=-1)),
           (ValueError, "rounding_seed must lie in", dict(rounding="stochastic", rounding_seed=1 << 64)),
           (ValueError, "rounding_seed must lie in", dict(rounding="nearest", rounding_seed=1 << 64)),
           (TypeError, "rounding_seed must be an int", dict(rounding="stochastic", rounding_seed=1.5))]
    for name, op in ops.items():
        for exc, match, kwargs in bad:
            with pytest.raises(exc, match=match):
                op(**kwargs)
            assert torch.equal(bits(W), bits(before)), (name, kwargs)
    cases = [(ValueError, "needs a rounding_seed.*no seeds",
              lambda: pk.lowrank_perturb_(W, U, Z, V, 0.1, rounding="stochastic")),
             (ValueError, "needs a rounding_seed.*seeds is empty",
              lambda: pk.perturb_(W, [], [], decay=0.5, rounding="stochastic")),
             (ValueError, "needs a rounding_seed.*seeds is empty",
              lambda: pk.subspace_perturb_(W, V, [], [], decay=0.5, rounding="stochastic")),
             (ValueError, r"offsets\[0\] = 3 is not a multiple of r = 2",
              lambda: pk.subspace_perturb_(W, V, 1, 0.1, offsets=[3], rounding="stochastic")),
             (ValueError, "keys has 2 entries but W has 1",
              lambda: pk.lowrank_perturb_(W, U, Z, V, 0.1, keys=[0, 1], rounding="stochastic",
                                          rounding_seed=1)),
             (ValueError, r"keys\[0\] must lie in",
              lambda: pk.lowrank_perturb_(W, U, Z, V, 0.1, keys=[1 << 32], rounding="stochastic",
                                          rounding_seed=1)),
             (ValueError, r"offsets\[0\] must lie in",
              lambda: pk.lowrank_perturb_(W, U, Z, V, 0.1, offsets=[-1]))]
    for exc, match, op in cases:
        with pytest.raises(exc, match=match):
            op()
        assert torch.equal(bits(W), bits(before)), match
    pk.subspace_perturb_(W, V, 1, 0.1, offsets=[3])  # the offset only matters when stochastic


# -- the custom ops ---------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", OP_CASES)
def test_opcheck_with_stochastic_rounding(device, backend):
    require(device, backend)
    ts = [values(17, torch.bfloat16, 40).to(device), values((4, 5), torch.float16, 41).to(device)]
    rseed = seed_to_int64((1 << 64) - 3)
    torch.library.opcheck(torch.ops.pgap.perturb_.default,
                          (ts, [], [seed_to_int64(3)], [0.5], [0, 1], [0, CARRY], 0.9, 0.0, backend, rseed))
    Ws = [values((6, 5), torch.bfloat16, 42).to(device), values((4, 3), torch.float16, 43).to(device)]
    Us = [values((6, 2), seed=44).to(device), values((4, 3), seed=45).to(device)]
    Zs = [values((2, 3), seed=46).to(device), values((3, 1), seed=47).to(device)]
    Vs = [values((5, 3), seed=48).to(device), values((3, 1), seed=49).to(device)]
    torch.library.opcheck(torch.ops.pgap.lowrank_perturb_.default,
                          (Ws, Us, Zs, Vs, [0.5, -1.0], 0.9, backend, [7, 8], [0, 100], rseed))
    Bs = [values((5, 2), seed=50).to(device), values((3, 4), seed=51).to(device)]
    torch.library.opcheck(torch.ops.pgap.subspace_perturb_.default,
                          (Ws, Bs, [seed_to_int64(3)], [0.5], [0, 1], [0, 8], 0.9, backend, rseed))


def _sr_step(ws, vs, us, zs, seed):
    pk.perturb_(ws, seed, 1e-2, rounding="stochastic", rounding_seed=seed + 1)
    pk.subspace_perturb_(ws, vs, seed, 1e-2, rounding="stochastic", rounding_seed=seed + 2)
    pk.lowrank_perturb_(ws, us, zs, vs, -0.5, decay=0.999, rounding="stochastic",
                        rounding_seed=seed + 3, keys=[4, 5], offsets=[0, 35])


def test_torch_compile_fullgraph_matches_eager():
    ws = [values((9, 6), torch.bfloat16, 60), values((5, 7), torch.float16, 61)]
    vs = [values((6, 3), seed=62), values((7, 3), seed=63)]
    us = [values((9, 2), seed=64), values((5, 2), seed=65)]
    zs = [values((2, 3), seed=66), values((2, 3), seed=67)]
    eager = [w.clone() for w in ws]
    compiled = [w.clone() for w in ws]
    _sr_step(eager, vs, us, zs, 11)
    torch.compile(_sr_step, fullgraph=True)(compiled, vs, us, zs, 11)
    for a, b in zip(eager, compiled):
        assert torch.equal(bits(a), bits(b))


def test_rng_md_examples_run():
    """docs/rng.md's Python (the reference implementation, the stochastic-rounding rule in plain
    Python and their checks against the package) runs as written."""
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "rng.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert any("stochastic_round" in b for b in blocks)
    namespace: dict = {}
    with pk.use_backend("native"):
        for block in blocks:
            exec(compile(block, "docs/rng.md", "exec"), namespace)  # noqa: S102
