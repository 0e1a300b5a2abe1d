"""perturb_: parity of every backend with reference, sharding invariance, round trips."""
import math

import pytest
import torch

import pgap_kernels as pk
from pgap_kernels.testing import ULP, assert_perturb_close

from conftest import is_triton_interpreter, on_every_host_isa

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(sizes, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(dtype).to(device) for n in sizes]


def run(backend, tensors, *args, **kwargs):
    out = [t.clone() for t in tensors]
    with pk.use_backend(backend):
        pk.perturb_(out, *args, **kwargs)
    return out


def check_parity(device, backend, tensors, seeds, coeffs, **kwargs):
    expected = run("reference", tensors, seeds, coeffs, **kwargs)
    actual = run(backend, tensors, seeds, coeffs, **kwargs)
    coeff_list = coeffs if isinstance(coeffs, list) else [coeffs]
    for a, e in zip(actual, expected):
        assert a.device.type == device
        assert_perturb_close(a, e, coeff_list + [kwargs.get("mean_coeff", 0.0)])
    return actual


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_sizes_single_seed(device_backend, dtype):
    device, backend = device_backend
    tensors = make([1, 3, 4097, 0, 5], dtype, device)
    check_parity(device, backend, tensors, 42, 1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_sizes_seeds_decay_mean(device_backend, dtype):
    device, backend = device_backend
    sizes = [7, 64, 1, 300, 2, 33] if is_triton_interpreter(device, backend) else \
        [7, 4096, 1, 12289, 2, 4097, 65, 3000, 1 << 15]
    tensors = make(sizes, dtype, device)
    means = make(sizes, dtype, device, seed=1)
    offsets = [(1 << 32) * 4 - 6 + p for p in range(len(sizes))]  # straddle c1 = 1
    check_parity(device, backend, tensors, [11, (1 << 64) - 1, 1 << 40], [0.5, -2.0, 1e-3],
                 keys=[9 * p + 1 for p in range(len(sizes))], offsets=offsets, decay=0.97,
                 mean=means, mean_coeff=-0.25)


def test_mixed_dtypes_in_one_call(device_backend):
    device, backend = device_backend
    tensors = [t for d in DTYPES for t in make([5, 130], d, device, seed=hash(str(d)) % 100)]
    check_parity(device, backend, tensors, [3, 4], [1.0, 0.25], decay=0.5)


def test_overwrite_ignores_old_values(device_backend):
    """decay == 0 writes the stream terms without reading t (even inf/NaN)."""
    device, backend = device_backend
    t = torch.full((37,), float("nan"), device=device)
    t[::3] = float("inf")
    with pk.use_backend(backend):
        pk.perturb_([t], 8, 2.0, decay=0.0, keys=[4])
        z = pk.gaussian(37, 8, key=4, device=device)
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t, 2.0 * z, rtol=0, atol=0)


def test_sharding_invariance(device_backend):
    """Perturbing slices with their offsets equals perturbing the whole tensor."""
    device, backend = device_backend
    n = 523 if is_triton_interpreter(device, backend) else 40001
    whole = make([n], torch.float32, device)[0]
    cuts = [0, 1, 6, 7, 250, n // 2 + 3, n]
    shards = [whole[a:b].clone() for a, b in zip(cuts, cuts[1:])]
    with pk.use_backend(backend):
        pk.perturb_(shards, [5, 6], [1.0, -0.5], keys=[17] * len(shards), offsets=cuts[:-1],
                    decay=0.9)
        pk.perturb_([whole], [5, 6], [1.0, -0.5], keys=[17], decay=0.9)
    assert torch.equal(torch.cat(shards), whole)


def test_order_invariance(device_backend):
    device, backend = device_backend
    tensors = make([9, 100, 3], torch.float32, device)
    a = run(backend, tensors, 1, 1.0, keys=[0, 1, 2])
    b = run(backend, tensors[::-1], 1, 1.0, keys=[2, 1, 0])[::-1]
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plus_minus_eps_round_trip(device_backend, dtype):
    """+eps then -eps returns within two roundings of the starting values."""
    device, backend = device_backend
    t0 = make([999], dtype, device)[0]
    t = t0.clone()
    eps = 1e-3
    with pk.use_backend(backend):
        pk.perturb_([t], 77, eps)
        mid = t.clone()
        pk.perturb_([t], 77, -eps)
    bound = 2 * ULP[dtype] * torch.maximum(t0.float().abs(), mid.float().abs()) + 1e-30
    assert ((t.float() - t0.float()).abs() <= bound).all()
    assert not torch.equal(mid, t0)


def test_mezo_step_identity(device_backend):
    """MeZO's three passes: +eps, -2eps, then restore + update + weight decay in one pass."""
    device, backend = device_backend
    theta = make([257, 31], torch.float32, device)
    eps, lr, wd, g, seed = 1e-3, 1e-2, 0.1, 0.7, 99
    params = [t.clone() for t in theta]
    with pk.use_backend(backend):
        pk.perturb_(params, seed, eps)
        pk.perturb_(params, seed, -2 * eps)
        decay = 1 - lr * wd
        pk.perturb_(params, seed, decay * eps - lr * g, decay=decay)
        z = [pk.gaussian(t.shape, seed, key=p, device=device) for p, t in enumerate(theta)]
    for p, t in enumerate(theta):
        torch.testing.assert_close(params[p], decay * t - lr * g * z[p], rtol=1e-5, atol=1e-6)


def test_zero_coefficients_and_no_seeds(device_backend):
    device, backend = device_backend
    t = make([50], torch.float32, device)[0]
    out = run(backend, [t], [], [], decay=0.5)[0]
    torch.testing.assert_close(out, 0.5 * t, rtol=0, atol=0)


def test_empty_list_and_empty_tensors(device_backend):
    device, backend = device_backend
    with pk.use_backend(backend):
        pk.perturb_([], 1, 1.0)
        e = torch.empty(0, device=device)
        pk.perturb_([e, torch.empty(2, 0, device=device)], 1, 1.0)
    assert e.numel() == 0


def test_parameters_and_views(device_backend):
    """nn.Parameters (requires_grad) and contiguous views are updated in place."""
    device, backend = device_backend
    lin = torch.nn.Linear(6, 5).to(device)
    before = [p.detach().clone() for p in lin.parameters()]
    with pk.use_backend(backend):
        pk.perturb_(list(lin.parameters()), 3, 0.1)
    after = list(lin.parameters())
    for b, a in zip(before, after):
        assert a.requires_grad and not torch.equal(a.detach(), b)
    base = torch.zeros(4, 10, device=device)
    with pk.use_backend(backend):
        pk.perturb_([base[1]], 3, 1.0, keys=[5], offsets=[10])
        ref = pk.gaussian(10, 3, key=5, offset=10, device=device)
    assert torch.equal(base[1], ref) and (base[0] == 0).all() and (base[2:] == 0).all()


def test_host_isas_agree_on_special_bf16_values():
    """Round to nearest into bfloat16 (the vectorized store of the AVX2/AVX-512 builds and the
    scalar one of the generic build) gives the same bits for NaN, ±inf, values that overflow to
    inf, the largest finite bf16, ties, subnormals and −0, in tensors of odd sizes."""
    big = torch.finfo(torch.bfloat16).max
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), big, -big, 3.3e38, -0.0,
                            1e-40, -1e-40, 1.00390625, 1.01171875, 0.0], dtype=torch.float32)
    xs = [special.repeat(n)[:n].to(torch.bfloat16) for n in (37, 4097)]

    def compute(backend="native"):  # decay 1, coefficients small and large: ties, overflow, NaN
        with pk.use_backend(backend):
            return [pk.perturbed(x, 5, c, key=1).view(torch.int16) for x in xs for c in (1e-3, 1e38, 0.0)]

    first = on_every_host_isa(compute)
    for a, b in zip(first, compute("reference")):  # the same values (a zero's sign may differ: c·z = ±0)
        a, b = a.view(torch.bfloat16).float(), b.view(torch.bfloat16).float()
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def test_host_isas_agree():
    """Every instruction-set build of the native kernel computes identical bits."""
    tensors = make([4097, 3, 100], torch.bfloat16, "cpu") + make([999], torch.float16, "cpu") + \
        make([1 << 14], torch.float32, "cpu")

    def compute():
        # offsets straddle the 2^32 block boundary, where the counter carries into c1
        out = run("native", tensors, [1, 2], [0.3, -0.1], decay=0.99,
                  offsets=[1, (1 << 34) - 4 * 5 - 2, 3, (1 << 34) - 101, 5])
        # stochastic rounding draws its words from the same Philox path (16, 8, 1 lanes)
        rounded = [t.clone() for t in tensors[:4]]
        with pk.use_backend("native"):
            pk.perturb_(rounded, 3, 1e-2, offsets=[7, (1 << 34) - 4 * 17 - 1, 0, 2],
                        rounding="stochastic", rounding_seed=(1 << 64) - 3)
        return out + rounded

    first = on_every_host_isa(compute)
    assert math.isfinite(float(first[0][0]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_aligned_layouts(device_backend, dtype):
    """Offsets and sizes divisible by 4 on fresh (aligned) tensors: the vectorized GPU paths."""
    device, backend = device_backend
    sizes = [4, 64, 1028, 8] if is_triton_interpreter(device, backend) else [4, 64, 4100, 1 << 14]
    tensors = make(sizes, dtype, device)
    means = make(sizes, dtype, device, seed=3)
    offsets = [0, 8, (1 << 34) - 16, 4 * 1001]
    check_parity(device, backend, tensors, [5, 6], [0.5, 0.25], offsets=offsets, decay=0.9,
                 mean=means, mean_coeff=0.5)
    check_parity(device, backend, tensors, 5, 1.0, offsets=offsets, decay=0.0)
