"""perturbed_many: perturbed over many tensors in one call, bit for bit equal to one
``perturbed`` per tensor on every backend (mixed dtypes and sizes, empty tensors, shards' offsets,
a mean term); sources never written; validation and overlap checks before any write; the custom
op pgap::perturbed_many_into (opcheck, torch.compile, FakeTensorMode)."""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels._stream import seed_to_int64

from conftest import OP_CASES, require
from test_perturbed import CARRY, COEFFS, SEEDS, bits, device_backend, values  # noqa: F401

SIZES_DTYPES = [(1, torch.float32), (3, torch.bfloat16), (0, torch.float16), (4097, torch.float32),
                ((7, 5), torch.bfloat16), (4097, torch.float16), (64, torch.bfloat16)]


def _tensors(device, seed=0):
    return [values(size, dtype, device, seed=seed + p) for p, (size, dtype) in enumerate(SIZES_DTYPES)]


def test_equals_one_perturbed_per_tensor(device_backend):
    device, backend = device_backend
    xs = _tensors(device)
    means = _tensors(device, seed=100)
    before = [x.clone() for x in xs]
    n = len(xs)
    keys = [3, 0xFFFFFFFF, 9, 9, 1, 2, 77]
    offsets = [0, CARRY, 5, 1 << 40, 11, 0, 3]
    cases = [dict(seeds=7, coeffs=1e-3),
             dict(seeds=SEEDS, coeffs=COEFFS, keys=keys, offsets=offsets),
             dict(seeds=SEEDS[:2], coeffs=COEFFS[:2], keys=keys, mean=means, mean_coeff=-0.25)]
    for case in cases:
        with pk.use_backend(backend):
            ys = pk.perturbed_many(xs, **case)
            for p in range(n):
                single = pk.perturbed(xs[p], case["seeds"], case["coeffs"],
                                      key=case.get("keys", range(n))[p],
                                      offset=case.get("offsets", [0] * n)[p],
                                      mean=case["mean"][p] if "mean" in case else None,
                                      mean_coeff=case.get("mean_coeff", 0.0))
                assert ys[p].shape == xs[p].shape and ys[p].dtype == xs[p].dtype
                assert torch.equal(bits(ys[p]), bits(single)), (case, p)
        for b, x in zip(before, xs):
            assert torch.equal(bits(b), bits(x)), "perturbed_many wrote a source"


def test_out_is_written_and_returned_and_a_source_may_repeat():
    x = values(10, torch.float32)
    outs = [torch.empty(10), torch.empty(10)]
    ys = pk.perturbed_many([x, x], [1, 2], [0.5, 0.5], keys=[4, 5], out=outs)
    assert ys[0] is outs[0] and ys[1] is outs[1]
    assert torch.equal(ys[1], pk.perturbed(x, [1, 2], [0.5, 0.5], key=5))
    assert pk.perturbed_many([], 1, 1.0) == []


def assert_rejected(exc, match, tensors, *args, **kwargs):
    """``perturbed_many`` raises ``exc`` and writes no source, mean or out."""
    groups = [g for g in (tensors, kwargs.get("mean"), kwargs.get("out")) if isinstance(g, list)]
    watched = [x for g in groups for x in g if isinstance(x, torch.Tensor)]
    before = [x.clone() for x in watched]
    with pytest.raises(exc, match=match):
        pk.perturbed_many(tensors, *args, **kwargs)
    for b, x in zip(before, watched):
        assert torch.equal(bits(b), bits(x)), "a tensor was modified"


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_bad_input(backend):
    require("cpu", backend)
    x, y = values(12, torch.float32), values(5, torch.bfloat16, seed=1)
    big = values(40, torch.float32, seed=2)
    with pk.use_backend(backend):
        assert_rejected(TypeError, "tensors must be a sequence", 3.0, 1, 1.0)
        assert_rejected(TypeError, r"tensors\[1\] has dtype torch.int64", [x, torch.zeros(3, dtype=torch.int64)], 1, 1.0)
        assert_rejected(ValueError, r"tensors\[1\] must be contiguous", [x, torch.zeros(4, 4).t()], 1, 1.0)
        assert_rejected(ValueError, "keys has 1 entries but tensors has 2", [x, y], 1, 1.0, keys=[0])
        assert_rejected(ValueError, r"offsets\[1\] must lie in", [x, y], 1, 1.0, offsets=[0, (1 << 63) - 2])
        assert_rejected(ValueError, r"seeds\[0\] must lie in", [x, y], -1, 1.0)
        assert_rejected(ValueError, "mean_coeff is nonzero but mean is None", [x], 1, 1.0, mean_coeff=1.0)
        assert_rejected(ValueError, "mean has 1 tensors but tensors has 2", [x, y], 1, 1.0, mean=[x], mean_coeff=1.0)
        assert_rejected(ValueError, "out has 1 tensors but tensors has 2", [x, y], 1, 1.0, out=[torch.empty(12)])
        assert_rejected(TypeError, r"out\[1\] has dtype torch.float64", [x, y], 1, 1.0,
                        out=[torch.empty(12), torch.empty(5, dtype=torch.float64)])
        assert_rejected(ValueError, r"out\[0\] has shape", [x, y], 1, 1.0,
                        out=[torch.empty(3), torch.empty(5, dtype=torch.bfloat16)])
        assert_rejected(ValueError, r"tensors\[0\] overlaps out\[0\]|out\[0\] overlaps tensors\[0\]",
                        [x], 1, 1.0, out=[x])
        assert_rejected(ValueError, r"out\[1\] overlaps out\[0\]", [x, x.clone()], 1, 1.0,
                        out=[big[24:36], big[28:40]])
        assert_rejected(ValueError, "overlaps", [x], 1, 1.0, mean=[big[:12]], mean_coeff=1.0, out=[big[4:16]])


def test_op_path_checks_overlap_before_writing():
    x = values(12, torch.float32)
    before = x.clone()
    with pytest.raises(ValueError, match="overlaps"):
        torch.ops.pgap.perturbed_many_into([x], [], [1], [1.0], [0], [0], 0.0, [x], "")
    assert torch.equal(x, before)


@pytest.mark.parametrize("device,backend", OP_CASES)
def test_opcheck(device, backend):
    require(device, backend)
    x = values(17, torch.float32, device)
    h = values(9, torch.bfloat16, device, seed=1)
    m = values(9, torch.bfloat16, device, seed=2)
    for args in [([x, h], [], [seed_to_int64(3)], [0.5], [0, 1], [0, 0], 0.0,
                  [torch.empty_like(x), torch.empty_like(h)], backend),
                 ([h], [m], [seed_to_int64((1 << 64) - 1), 2], [0.5, -1.0], [7], [CARRY], 0.25,
                  [torch.empty_like(h)], backend),
                 ([x, h], [], [seed_to_int64(3), 4], [0.5, 0.25], [0, 1], [5, CARRY], 0.0,
                  [torch.empty_like(x), torch.empty_like(h)], backend, "rademacher")]:
        torch.library.opcheck(torch.ops.pgap.perturbed_many_into.default, args)


def test_torch_compile_fullgraph_matches_eager():
    w, b = values((6, 5), torch.float32), values(6, torch.float32, seed=1)

    def both(w, b):
        return pk.perturbed_many([w, b], 9, 1e-2, keys=[1, 2])

    for e, c in zip(both(w, b), torch.compile(both, fullgraph=True)(w, b)):
        assert torch.equal(e, c)


def test_fake_tensor_mode_goes_through_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        ys = pk.perturbed_many([torch.empty(5, 3), torch.empty(2)], 1, 1.0)
        assert [tuple(y.shape) for y in ys] == [(5, 3), (2,)]


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_out_minus_is_the_call_with_negated_coefficients(device_backend, distribution):
    """θ ± d from one call: out_minus bit for bit what the call with every coefficient and the
    mean coefficient negated writes (native: one pass, one draw; the others: a second pass)."""
    device, backend = device_backend
    xs, means = _tensors(device), _tensors(device, seed=100)
    keys, offsets = [3, 0xFFFFFFFF, 9, 9, 1, 2, 77], [0, CARRY, 5, 1 << 40, 11, 0, 3]
    before = [x.clone() for x in xs]
    common = dict(keys=keys, offsets=offsets, mean=means, distribution=distribution)
    with pk.use_backend(backend):
        minus = [torch.empty_like(x) for x in xs]
        plus = pk.perturbed_many(xs, SEEDS[:2], COEFFS[:2], mean_coeff=-0.25, out_minus=minus, **common)
        want_plus = pk.perturbed_many(xs, SEEDS[:2], COEFFS[:2], mean_coeff=-0.25, **common)
        want_minus = pk.perturbed_many(xs, SEEDS[:2], [-c for c in COEFFS[:2]], mean_coeff=0.25, **common)
    for p in range(len(xs)):
        assert torch.equal(bits(plus[p]), bits(want_plus[p])), p
        assert torch.equal(bits(minus[p]), bits(want_minus[p])), p
        assert torch.equal(bits(before[p]), bits(xs[p])), "a source was written"


def test_out_minus_is_checked_before_anything_is_written():
    x, y = values(12, torch.float32), values(5, torch.bfloat16, seed=1)
    out = [torch.zeros(12), torch.zeros(5, dtype=torch.bfloat16)]
    for bad, exc, match in [([torch.zeros(12)], ValueError, "out_minus has 1 tensors but tensors has 2"),
                            ([torch.zeros(12), torch.zeros(5)], TypeError, r"out_minus\[1\] has dtype"),
                            ([out[0], torch.zeros(5, dtype=torch.bfloat16)], ValueError,
                             r"out_minus\[0\] and out\[0\] are the same tensor"),
                            ([x, torch.zeros(5, dtype=torch.bfloat16)], ValueError, "overlaps")]:
        watched = [x, y] + out + [t for t in bad if t is not x and t is not out[0]]
        saved = [t.clone() for t in watched]
        with pytest.raises(exc, match=match):
            pk.perturbed_many([x, y], 1, 1.0, out=out, out_minus=bad)
        assert all(torch.equal(bits(a), bits(b)) for a, b in zip(saved, watched))


@pytest.mark.parametrize("device,backend", OP_CASES)
def test_pair_opcheck(device, backend):
    require(device, backend)
    x = values(17, torch.float32, device)
    h = values(9, torch.bfloat16, device, seed=1)
    args = ([x, h], [], [seed_to_int64(3)], [0.5], [0, 1], [0, 0], 0.0,
            [torch.empty_like(x), torch.empty_like(h)], [torch.empty_like(x), torch.empty_like(h)],
            backend)
    torch.library.opcheck(torch.ops.pgap.perturbed_pair_many_into.default, args)


def test_out_minus_under_torch_compile_fullgraph_matches_eager():
    w, b = values((6, 5), torch.float32), values(6, torch.float32, seed=1)

    def both(w, b):
        minus = [torch.empty_like(w), torch.empty_like(b)]
        plus = pk.perturbed_many([w, b], 9, 1e-2, keys=[1, 2], out_minus=minus)
        return plus + minus

    eager = both(w, b)
    compiled = torch.compile(both, fullgraph=True)(w, b)
    assert all(torch.equal(bits(a), bits(c)) for a, c in zip(eager, compiled))
    assert torch.equal(bits(eager[2]), bits(pk.perturbed(w, 9, -1e-2, key=1)))
