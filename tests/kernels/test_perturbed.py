"""perturbed: the out-of-place perturb_ (decay 1), bit for bit, on every backend; the source is
never written; out=; validation before any write; the custom op pgap::perturbed_into (opcheck,
torch.compile without graph breaks, FakeTensorMode, the eager fast path)."""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels._stream import seed_to_int64

from conftest import OP_CASES, backend_cases, require

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CARRY = (1 << 32) * 4 - 6  # element 0 six indices before the carry from c0 into c1
SEEDS, COEFFS = [11, (1 << 64) - 1, 1 << 40], [0.5, -2.0, 1e-3]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that -0.0 and +0.0 (and NaN payloads) count as different."""
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def values(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(device)


def in_place(backend, tensor, seeds, coeffs, *, key=0, offset=0, mean=None, mean_coeff=0.0):
    """The definition: perturb_ with decay 1 on a clone."""
    t = tensor.clone()
    with pk.use_backend(backend):
        pk.perturb_(t, seeds, coeffs, keys=[key], offsets=[offset],
                    mean=None if mean is None else [mean], mean_coeff=mean_coeff)
    return t


def call_cases(mean):
    """``perturbed`` keyword sets: one seed; three seeds at key 2**32-1 across the c0 carry; two
    seeds with ``mean`` and a negative mean_coeff."""
    return [dict(seeds=7, coeffs=1e-3),
            dict(seeds=SEEDS, coeffs=COEFFS, key=0xFFFFFFFF, offset=CARRY),
            dict(seeds=SEEDS[:2], coeffs=COEFFS[:2], key=3, offset=5, mean=mean, mean_coeff=-0.25)]


@pytest.fixture(params=backend_cases(include_reference=True))
def device_backend(request):
    device, backend = request.param
    require(device, backend)
    return device, backend


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [0, 1, 3, 4097])
def test_equals_clone_and_perturb_(device_backend, dtype, size):
    device, backend = device_backend
    x = values(size, dtype, device)
    mean = values(size, dtype, device, seed=1)
    before = x.clone()
    for case in call_cases(mean):
        seeds, coeffs = case.pop("seeds"), case.pop("coeffs")
        with pk.use_backend(backend):
            y = pk.perturbed(x, seeds, coeffs, **case)
        expected = in_place(backend, x, seeds, coeffs, **case)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert torch.equal(bits(y), bits(expected)), case
        assert torch.equal(bits(x), bits(before)), "perturbed wrote its source"


def test_shapes_and_a_2d_tensor(device_backend):
    device, backend = device_backend
    x = values((5, 7), torch.bfloat16, device)
    with pk.use_backend(backend):
        y = pk.perturbed(x, 4, 0.5, key=2)
    assert y.shape == (5, 7)
    assert torch.equal(bits(y), bits(in_place(backend, x, 4, 0.5, key=2)))


def test_shard_equals_slice_of_whole(device_backend):
    """A shard perturbed at its offset is the slice of the whole tensor's result."""
    device, backend = device_backend
    x = values(301, torch.float32, device)
    with pk.use_backend(backend):
        whole = pk.perturbed(x, [5, 6], [1.0, -0.5], key=9, offset=CARRY)
        parts = [pk.perturbed(x[lo:hi], [5, 6], [1.0, -0.5], key=9, offset=CARRY + lo)
                 for lo, hi in ((0, 3), (3, 150), (150, 301))]
    assert torch.equal(bits(whole), bits(torch.cat(parts)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_out(device_backend, dtype):
    device, backend = device_backend
    x = values(37, dtype, device)
    mean = values(37, dtype, device, seed=1)
    out = torch.full_like(x, float("nan"))
    version = out._version
    with pk.use_backend(backend):
        y = pk.perturbed(x, [1, 2], [0.3, 0.7], key=4, offset=9, mean=mean, mean_coeff=2.0, out=out)
    assert y is out
    assert out._version > version
    expected = in_place(backend, x, [1, 2], [0.3, 0.7], key=4, offset=9, mean=mean, mean_coeff=2.0)
    assert torch.equal(bits(out), bits(expected))


def test_no_seeds_is_a_copy(device_backend):
    device, backend = device_backend
    x = values(10, torch.float32, device)
    with pk.use_backend(backend):
        assert torch.equal(pk.perturbed(x, [], []), x)


def test_parameter_input_gives_a_plain_tensor_without_grad():
    w = torch.nn.Parameter(values((4, 3), torch.float32))
    y = pk.perturbed(w, 1, 0.1)
    assert type(y) is torch.Tensor and not y.requires_grad
    assert torch.equal(y, in_place("native", w.detach(), 1, 0.1))


def assert_rejected(exc, match, tensor, *args, **kwargs):
    """``perturbed`` raises ``exc`` and writes neither its source, mean, nor out."""
    watched = [x for x in [tensor, kwargs.get("mean"), kwargs.get("out")] if isinstance(x, torch.Tensor)]
    before = [x.clone() for x in watched]
    with pytest.raises(exc, match=match):
        pk.perturbed(tensor, *args, **kwargs)
    for b, x in zip(before, watched):
        assert torch.equal(bits(b), bits(x)), "a tensor was modified"


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_bad_input(backend):
    x = values(12, torch.float32)
    m = values(12, torch.float32, seed=1)
    with pk.use_backend(backend):
        assert_rejected(TypeError, "tensor must be a torch.Tensor", [1.0, 2.0], 1, 1.0)
        assert_rejected(TypeError, "tensor has dtype torch.int64", torch.zeros(3, dtype=torch.int64), 1, 1.0)
        assert_rejected(TypeError, "tensor has dtype torch.float64", torch.zeros(3, dtype=torch.float64), 1, 1.0)
        assert_rejected(ValueError, "tensor must be contiguous", torch.zeros(4, 4).t(), 1, 1.0)
        assert_rejected(ValueError, "seeds has 2 entries but coeffs has 1", x, [1, 2], [1.0])
        assert_rejected(ValueError, r"seeds\[0\] must lie in", x, -1, 1.0)
        assert_rejected(ValueError, r"seeds\[0\] must lie in", x, 1 << 64, 1.0)
        assert_rejected(TypeError, r"seeds\[0\] must be an int", x, [1.5], [1.0])
        assert_rejected(ValueError, r"coeffs\[0\] must be finite", x, 1, float("nan"))
        assert_rejected(ValueError, "key must lie in", x, 1, 1.0, key=1 << 32)
        assert_rejected(ValueError, "key must lie in", x, 1, 1.0, key=-1)
        assert_rejected(TypeError, "key must be an int", x, 1, 1.0, key=2.0)
        assert_rejected(ValueError, "offset must lie in", x, 1, 1.0, offset=-1)
        assert_rejected(ValueError, "offset must lie in", x, 1, 1.0, offset=(1 << 63) - 5)
        assert_rejected(ValueError, "mean_coeff is nonzero but mean is None", x, 1, 1.0, mean_coeff=0.5)
        assert_rejected(ValueError, "mean_coeff must be finite", x, 1, 1.0, mean=m, mean_coeff=float("inf"))
        assert_rejected(TypeError, "mean must be a torch.Tensor", x, 1, 1.0, mean=[m], mean_coeff=1.0)
        assert_rejected(ValueError, "mean has shape", x, 1, 1.0, mean=m[:5], mean_coeff=1.0)
        assert_rejected(TypeError, "mean has dtype", x, 1, 1.0, mean=m.half(), mean_coeff=1.0)
        assert_rejected(ValueError, "mean must be contiguous", x, 1, 1.0,
                        mean=torch.zeros(24)[::2], mean_coeff=1.0)
        assert_rejected(TypeError, "out must be a torch.Tensor", x, 1, 1.0, out=[0.0] * 12)
        assert_rejected(ValueError, "out has shape", x, 1, 1.0, out=torch.zeros(3, 4))
        assert_rejected(TypeError, "out has dtype", x, 1, 1.0, out=torch.zeros(12, dtype=torch.float64))
        assert_rejected(ValueError, "out must be contiguous", x, 1, 1.0, out=torch.zeros(24)[::2])
        assert_rejected(ValueError, "tensor overlaps out", x, 1, 1.0, out=x)
        big = values(20, torch.float32)
        assert_rejected(ValueError, "overlaps", big[:12], 1, 1.0, out=big[8:20])
        assert_rejected(ValueError, "overlaps", x, 1, 1.0, mean=big[:12], mean_coeff=1.0, out=big[4:16])


def test_op_path_checks_overlap_before_writing():
    x = values(12, torch.float32)
    before = x.clone()
    with pytest.raises(ValueError, match="overlaps"):
        torch.ops.pgap.perturbed_into(x, None, [1], [1.0], 0, 0, 0.0, x, "")
    assert torch.equal(x, before)


@pytest.mark.parametrize("device,backend", OP_CASES)
def test_opcheck(device, backend):
    require(device, backend)
    x = values(17, torch.float32, device)
    m = values(17, torch.float32, device, seed=1)
    for args in [(x, None, [seed_to_int64(3)], [0.5], 0, 0, 0.0, torch.empty_like(x), backend),
                 (x.bfloat16(), m.bfloat16(), [seed_to_int64((1 << 64) - 1), 2], [0.5, -1.0], 7, CARRY,
                  0.25, torch.empty_like(x, dtype=torch.bfloat16), backend),
                 (x, m, [seed_to_int64(3), 4], [0.5, 0.25], 7, CARRY, 0.5, torch.empty_like(x),
                  backend, "rademacher")]:
        torch.library.opcheck(torch.ops.pgap.perturbed_into.default, args)


def forwards(w, b, x, seed, eps):
    """A no-write ZO pair of forwards: each sees W ± eps·z, the weights are never written."""
    plus = x @ pk.perturbed(w, seed, eps, key=1).T + pk.perturbed(b, seed, eps, key=2)
    minus = x @ pk.perturbed(w, seed, -eps, key=1).T + pk.perturbed(b, seed, -eps, key=2)
    return plus, minus


def test_torch_compile_fullgraph_matches_eager():
    w, b, x = values((6, 5), torch.float32), values(6, torch.float32, seed=1), values((3, 5), torch.float32, seed=2)
    eager = forwards(w, b, x, 9, 1e-2)
    compiled = torch.compile(forwards, fullgraph=True)(w, b, x, 9, 1e-2)
    for a, c in zip(eager, compiled):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)  # the matmuls may be fused differently
    assert torch.equal(pk.perturbed(w, 9, 1e-2, key=1), torch.compile(
        lambda t: pk.perturbed(t, 9, 1e-2, key=1), fullgraph=True)(w))


def test_fake_tensor_mode_goes_through_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(5, 3)
        y = pk.perturbed(x, 1, 1.0)  # would crash on data_ptr() if the fast path were taken
        out = torch.empty(5, 3)
        z = pk.perturbed(x, 1, 1.0, out=out)
    assert y.shape == (5, 3) and z is out
