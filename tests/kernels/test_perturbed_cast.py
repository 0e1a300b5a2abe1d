"""perturbed / perturbed_many / PerturbedManyPlan with an ``out`` of another dtype than the source:
the float32 result rounded once to nearest into out's dtype, on every backend. The definition
it is held to: the same call on the source widened to float32 (exact), then ``.to(out dtype)``
(round to nearest even; Triton's CPU interpreter truncates into bfloat16) — for a float32 source, what ``torch.autocast`` casts the perturbed
float32 copy to. Every dtype pair, odd sizes, a mean term, both streams, ``out_minus``, every
host instruction set, and validation before any write."""
import itertools

import pytest
import torch

import pgap_kernels as pk

from conftest import is_triton_interpreter, on_every_host_isa
from test_perturbed import CARRY, COEFFS, SEEDS, bits, call_cases, device_backend, values  # noqa: F401

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PAIRS = [(s, o) for s, o in itertools.product(DTYPES, DTYPES) if s != o]
SIZES = [0, 1, 3, 4097]


def definition(backend, x, mean, out_dtype, device="cpu", **kwargs):
    """The same pass from the float32-widened source and mean, rounded to nearest into out_dtype
    (truncated into bfloat16 under Triton's CPU interpreter, which converts so; compiled Triton
    rounds to nearest)."""
    with pk.use_backend(backend):
        wide = pk.perturbed(x.float(), mean=None if mean is None else mean.float(), **kwargs)
    if out_dtype == torch.bfloat16 and is_triton_interpreter(device, backend):
        return (wide.view(torch.int32) >> 16).to(torch.int16).view(torch.bfloat16)
    return wide.to(out_dtype)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("src_dtype,out_dtype", PAIRS)
def test_perturbed_into_another_dtype(device_backend, src_dtype, out_dtype, distribution):
    device, backend = device_backend
    for size in SIZES:
        x = values(size, src_dtype, device)
        mean = values(size, src_dtype, device, seed=1)
        before = x.clone()
        for case in call_cases(mean):
            m = case.pop("mean", None)
            out = torch.full((size,), float("nan"), dtype=out_dtype, device=device)
            with pk.use_backend(backend):
                y = pk.perturbed(x, mean=m, out=out, distribution=distribution, **case)
            assert y is out
            expected = definition(backend, x, m, out_dtype, device, distribution=distribution, **case)
            assert torch.equal(bits(y), bits(expected)), (size, case)
            assert torch.equal(bits(x), bits(before)), "perturbed wrote its source"


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_perturbed_many_mixed_pairs_and_out_minus(device_backend, distribution):
    """One call with tensors of every dtype pair (and same-dtype ones), sizes 1 to 4097, a mean:
    each out and out_minus is the definition (out_minus: negated coefficients)."""
    device, backend = device_backend
    pairs = PAIRS + [(d, d) for d in DTYPES]
    sizes = [1, 3, 4097, 64, 5, 0, 130, 7, 33]
    xs = [values(n, s, device, seed=p) for p, (n, (s, _)) in enumerate(zip(sizes, pairs))]
    means = [values(n, s, device, seed=50 + p) for p, (n, (s, _)) in enumerate(zip(sizes, pairs))]
    outs = [torch.empty(n, dtype=o, device=device) for n, (_, o) in zip(sizes, pairs)]
    minus = [torch.empty_like(o) for o in outs]
    keys, offsets = list(range(3, 3 + len(xs))), [0, CARRY, 5, 1 << 40, 11, 0, 3, 127, 9]
    with pk.use_backend(backend):
        pk.perturbed_many(xs, SEEDS, COEFFS, keys=keys, offsets=offsets, mean=means, mean_coeff=0.5,
                          out=outs, out_minus=minus, distribution=distribution)
    for p, (x, m) in enumerate(zip(xs, means)):
        for got, sign in ((outs[p], 1.0), (minus[p], -1.0)):
            expected = definition(backend, x, m, got.dtype, device, seeds=SEEDS,
                                  coeffs=[sign * c for c in COEFFS], key=keys[p], offset=offsets[p],
                                  mean_coeff=sign * 0.5, distribution=distribution)
            assert torch.equal(bits(got), bits(expected)), (p, pairs[p], sign)


def test_plan_into_another_dtype_equals_perturbed_many():
    xs = [values(n, torch.float32, seed=n) for n in (5, 4097, 64)]
    outs = [torch.empty(x.shape, dtype=d) for x, d in zip(xs, (torch.bfloat16, torch.float16, torch.float32))]
    plan = pk.PerturbedManyPlan(xs, keys=[1, 2, 3], out=outs, distribution="rademacher")
    got = [o.clone() for o in plan([4, 5], [1e-2, -2e-3])]
    expected = pk.perturbed_many(xs, [4, 5], [1e-2, -2e-3], keys=[1, 2, 3], distribution="rademacher",
                                 out=[torch.empty_like(o) for o in outs])
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and torch.equal(bits(g), bits(e))


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_every_host_isa_writes_the_same_bits(distribution):
    """The vectorized rows (float32 loads, 16-bit stores and the reverse) and the scalar rests."""
    pairs = PAIRS
    xs = [values(4097 + p, s, seed=p) for p, (s, _) in enumerate(pairs)]
    means = [values(4097 + p, s, seed=9 + p) for p, (s, _) in enumerate(pairs)]

    def compute():
        outs = [torch.empty(x.shape, dtype=o) for x, (_, o) in zip(xs, pairs)]
        minus = [torch.empty_like(o) for o in outs]
        with pk.use_backend("native"):
            pk.perturbed_many(xs, SEEDS, COEFFS, offsets=[3] * len(xs), mean=means, mean_coeff=0.25,
                              out=outs, out_minus=minus, distribution=distribution)
        return [bits(t) for t in outs + minus]

    results = on_every_host_isa(compute)
    for p, (x, m) in enumerate(zip(xs, means)):
        expected = definition("native", x, m, pairs[p][1], seeds=SEEDS, coeffs=COEFFS, key=p,
                              offset=3, mean_coeff=0.25, distribution=distribution)
        assert torch.equal(results[p], bits(expected)), pairs[p]


def test_a_float32_copy_under_autocast_equals_the_narrow_copy():
    """The point of the narrow copy: F.linear under autocast(bf16) on the float32 perturbed copy
    gives the bits it gives on the bf16 copy written directly."""
    w, x = values((6, 10), torch.float32), values((4, 10), torch.float32, seed=3)
    wide = pk.perturbed(w, 5, 1e-2, key=1)
    narrow = pk.perturbed(w, 5, 1e-2, key=1, out=torch.empty(6, 10, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        a = torch.nn.functional.linear(x, wide)
        b = torch.nn.functional.linear(x, narrow)
    assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(bits(a), bits(b))


def _rejected(exc, match, call, watched):
    before = [t.clone() for t in watched]
    with pytest.raises(exc, match=match):
        call()
    for b, t in zip(before, watched):
        assert torch.equal(bits(b), bits(t)), "a tensor was written"


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_bad_out_dtypes_are_refused_before_any_write(backend):
    x = values(12, torch.float32)
    o16 = torch.zeros(12, dtype=torch.bfloat16)
    with pk.use_backend(backend):
        _rejected(TypeError, "out has dtype torch.float64",
                  lambda: pk.perturbed(x, 1, 1.0, out=torch.zeros(12, dtype=torch.float64)), [x])
        _rejected(TypeError, r"out\[0\] has dtype torch.int32",
                  lambda: pk.perturbed_many([x], 1, 1.0, out=[torch.zeros(12, dtype=torch.int32)]), [x])
        _rejected(TypeError, r"out_minus\[0\] has dtype torch.float16, expected torch.bfloat16 like out\[0\]",
                  lambda: pk.perturbed_many([x], 1, 1.0, out=[o16],
                                            out_minus=[torch.zeros(12, dtype=torch.float16)]), [x, o16])
        _rejected(ValueError, "out has shape",
                  lambda: pk.perturbed(x, 1, 1.0, out=torch.zeros(13, dtype=torch.bfloat16)), [x])
        # a mean stays like its source
        _rejected(TypeError, "mean has dtype",
                  lambda: pk.perturbed(x, 1, 1.0, mean=o16, mean_coeff=1.0, out=o16.clone()), [x, o16])
        # a bf16 view of the source's own memory still overlaps it
        raw = torch.zeros(24)
        _rejected(ValueError, "overlaps",
                  lambda: pk.perturbed(raw[:12], 1, 1.0, out=raw.view(torch.bfloat16)[:12]), [raw])
