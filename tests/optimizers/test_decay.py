"""The decay of perturb_, lowrank_perturb_ and subspace_perturb_ is a float32: a decay that is 0 in
float32 (|decay| <= 2**-150, e.g. 1e-50) overwrites W without reading it on every backend,
and the smallest nonzero float32 decay reads it (docs/rng.md, step 3)."""
import pytest
import torch

import pgap_kernels as pk

from conftest import backend_cases, require

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ZERO_IN_FLOAT32 = [1e-50, -1e-50, 2.0 ** -151]  # 2**-151 rounds to 0 (ties to even at 2**-150 too)
SMALLEST_FLOAT32 = 2.0 ** -149


@pytest.fixture(params=backend_cases(include_reference=True))
def device_backend(request):
    device, backend = request.param
    require(device, backend)
    return device, backend


def poisoned(dtype, device):
    """A 13 x 11 W of NaN with rows of +inf and -inf: any read of it shows in the result."""
    w = torch.full((13, 11), float("nan"), dtype=dtype)
    w[1::3], w[2::3] = float("inf"), float("-inf")
    return w.to(device)


def factors(device):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(*shape, generator=g).to(device) for shape in ((13, 2), (2, 2), (11, 2))]


OPS = {
    "perturb_": lambda w, f, decay: pk.perturb_([w], [5, 6], [0.5, -0.25], decay=decay),
    "lowrank_perturb_": lambda w, f, decay: pk.lowrank_perturb_(w, f[0], f[1], f[2], 0.5, decay=decay),
    "subspace_perturb_": lambda w, f, decay: pk.subspace_perturb_(w, f[2], [5, 6], [0.5, -0.25],
                                                                  decay=decay),
}


def result(backend, op, dtype, device, decay):
    w = poisoned(dtype, device)
    with pk.use_backend(backend):
        OPS[op](w, factors(device), decay)
    return w.cpu()


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decay_zero_in_float32_overwrites(device_backend, op, dtype):
    device, backend = device_backend
    overwritten = result(backend, op, dtype, device, 0.0)
    assert torch.isfinite(overwritten).all()
    for decay in ZERO_IN_FLOAT32:
        assert torch.equal(result(backend, op, dtype, device, decay), overwritten), decay


@pytest.mark.parametrize("op", list(OPS))
def test_smallest_float32_decay_reads_w(device_backend, op):
    device, backend = device_backend
    got = result(backend, op, torch.float32, device, SMALLEST_FLOAT32)
    assert not torch.isfinite(got).any()  # 2**-149 * NaN and 2**-149 * inf
