"""The custom op pgap::perturb_: opcheck and torch.compile."""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels._stream import seed_to_int64

from conftest import HAS_CUDA, OP_CASES


def sample_args(device, backend):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(17, generator=g).to(device), torch.randn(4, 5, generator=g).to(device)]
    means = [torch.randn_like(t) for t in tensors]
    return [
        (tensors, [], [seed_to_int64(3)], [0.5], [0, 1], [0, 0], 1.0, 0.0, backend),
        (tensors, means, [seed_to_int64((1 << 64) - 1), 2], [0.5, -1.0], [5, 6], [3, 100], 0.9,
         0.25, backend),
        (tensors, means, [seed_to_int64(3), 4], [0.5, -1.0], [5, 6], [3, 200], 0.9, 0.25, backend,
         None, "rademacher"),
        ([t.bfloat16() for t in tensors], [], [seed_to_int64(3)], [0.5], [5, 6], [3, 200], 1.0, 0.0,
         backend, seed_to_int64(9), "rademacher"),
    ]


@pytest.mark.parametrize("device,backend", OP_CASES)
def test_opcheck(device, backend):
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA device")
    for args in sample_args(device, backend):
        torch.library.opcheck(torch.ops.pgap.perturb_.default, args)


def mezo_passes(params, seed, eps):
    pk.perturb_(params, seed, eps)
    pk.perturb_(params, seed, -2 * eps)
    pk.perturb_(params, seed, eps, decay=0.999)


def test_torch_compile_matches_eager():
    g = torch.Generator().manual_seed(1)
    eager = [torch.randn(33, generator=g), torch.randn(8, 9, generator=g)]
    compiled = [t.clone() for t in eager]
    mezo_passes(eager, 5, 1e-2)
    torch.compile(mezo_passes, fullgraph=True)(compiled, 5, 1e-2)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_eager_fast_path_equals_op_and_bumps_versions():
    g = torch.Generator().manual_seed(2)
    a = [torch.randn(100, generator=g), torch.randn(3, 7, generator=g).bfloat16()]
    b = [t.clone() for t in a]
    versions = [t._version for t in a]
    pk.perturb_(a, [1, 2], [0.1, 0.2], decay=0.9)  # eager fast path
    torch.ops.pgap.perturb_(b, [], [1, 2], [0.1, 0.2], [0, 1], [0, 0], 0.9, 0.0, "")
    for x, y, v in zip(a, b, versions):
        assert torch.equal(x, y)
        assert x._version > v


def test_fake_tensor_mode_goes_through_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        t = torch.empty(5)
        pk.perturb_([t], 1, 1.0)  # would crash on data_ptr() if the fast path were taken
        z = pk.gaussian((2, 3), 1)
    assert z.shape == (2, 3)
