"""The custom ops pgap::subspace_perturb_, pgap::lowrank_perturb_ and pgap::gaussian_sketch_batch:
opcheck, torch.compile without graph breaks, FakeTensorMode, eager fast path (pgap::perturb_ is
tested in tests/kernels/test_torch_library.py)."""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels._stream import seed_to_int64

from conftest import HAS_CUDA, OP_CASES

CASES = OP_CASES


def _need(device):
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA device")


def _randn(*shape, seed=0, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


@pytest.mark.parametrize("device,backend", CASES)
def test_opcheck_subspace(device, backend):
    _need(device)
    ws = [_randn(7, 5, seed=1, device=device), _randn(3, 9, seed=2, device=device, dtype=torch.bfloat16)]
    vs = [_randn(5, 2, seed=3, device=device), _randn(9, 4, seed=4, device=device)]
    for args in [(ws, vs, [seed_to_int64(3)], [0.5], [0, 1], [0, 0], 1.0, backend),
                 (ws, vs, [seed_to_int64((1 << 64) - 1), 2], [0.5, -1.0], [5, 6], [3, 100], 0.9, backend)]:
        torch.library.opcheck(torch.ops.pgap.subspace_perturb_.default, args)


@pytest.mark.parametrize("device,backend", CASES)
def test_opcheck_lowrank(device, backend):
    _need(device)
    ws = [_randn(6, 5, seed=1, device=device), _randn(4, 3, seed=2, device=device, dtype=torch.float16)]
    us = [_randn(6, 2, seed=3, device=device), _randn(4, 3, seed=4, device=device)]
    zs = [_randn(2, 3, seed=5, device=device), _randn(3, 1, seed=6, device=device)]
    vs = [_randn(5, 3, seed=7, device=device), _randn(3, 1, seed=8, device=device)]
    torch.library.opcheck(torch.ops.pgap.lowrank_perturb_.default, (ws, us, zs, vs, [0.5, -1.0], 0.9, backend))


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("transpose", [False, True])
def test_opcheck_sketch(device, backend, transpose):
    _need(device)
    problems = [(5, 7, 1, 0), (4, 3, 2, 9)]
    omegas = [_randn(p[0] if transpose else p[1], 3, seed=i, device=device) for i, p in enumerate(problems)]
    ms, ns, keys, offsets = (list(c) for c in zip(*problems))
    torch.library.opcheck(torch.ops.pgap.gaussian_sketch_batch.default,
                          (ms, ns, keys, offsets, [seed_to_int64(4), 5], [0.3, 0.7], omegas, transpose, backend))


def _zo_step(ws, vs, us, zs, omega, seed):
    """A P-GAP-like step: subspace perturbation, low-rank update, sketches of a Gaussian sum."""
    pk.subspace_perturb_(ws, vs, seed, 1e-2)
    pk.lowrank_perturb_(ws, us, zs, vs, -0.5, decay=0.999)
    sk = pk.gaussian_sketch(ws[0].shape[0], ws[0].shape[1], [seed, seed + 1], [0.5, -0.5], omega, key=3)
    sk_t = pk.gaussian_sketch_batch([(4, 5, 1, 8)], seed, 1.0, [omega[:4]], transpose=True)[0]
    return sk, sk_t


def test_torch_compile_fullgraph_matches_eager():
    ws = [_randn(9, 6, seed=1), _randn(5, 7, seed=2, dtype=torch.bfloat16)]
    vs = [_randn(6, 3, seed=3), _randn(7, 3, seed=4)]
    us = [_randn(9, 2, seed=5), _randn(5, 2, seed=6)]
    zs = [_randn(2, 3, seed=7), _randn(2, 3, seed=8)]
    omega = _randn(6, 4, seed=9)
    eager = [w.clone() for w in ws]
    compiled = [w.clone() for w in ws]
    out_e = _zo_step(eager, vs, us, zs, omega, 11)
    out_c = torch.compile(_zo_step, fullgraph=True)(compiled, vs, us, zs, omega, 11)
    for a, b in zip(eager + list(out_e), compiled + list(out_c)):
        assert torch.equal(a, b)


def test_fake_tensor_mode_goes_through_the_ops():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        w, v = torch.empty(5, 4), torch.empty(4, 2)
        pk.subspace_perturb_([w], [v], 1, 1.0)  # would crash on data_ptr() on the fast path
        pk.lowrank_perturb_(w, torch.empty(5, 2), torch.empty(2, 2), v, 1.0)
        sk = pk.gaussian_sketch(5, 4, 1, 1.0, torch.empty(5, 3), transpose=True)
    assert sk.shape == (4, 3) and sk.dtype == torch.float32


def test_eager_fast_path_equals_op_and_bumps_versions():
    a = [_randn(10, 6, seed=1), _randn(3, 7, seed=2, dtype=torch.bfloat16)]
    b = [t.clone() for t in a]
    vs = [_randn(6, 2, seed=3), _randn(7, 5, seed=4)]
    versions = [t._version for t in a]
    pk.subspace_perturb_(a, vs, [1, 2], [0.1, 0.2], keys=[4, 5], offsets=[1, 2], decay=0.9)  # fast path
    torch.ops.pgap.subspace_perturb_(b, vs, [1, 2], [0.1, 0.2], [4, 5], [1, 2], 0.9, "")
    for x, y, v in zip(a, b, versions):
        assert torch.equal(x, y)
        assert x._version > v


def test_op_path_checks_memory_overlap_before_writing():
    """The overlap checks need data pointers, so they run in the op's body: still before any write."""
    w = _randn(6, 5)
    before = w.clone()
    with pytest.raises(ValueError, match="twice"):
        torch.ops.pgap.lowrank_perturb_([w, w], [_randn(6, 2)] * 2, [_randn(2, 2)] * 2, [_randn(5, 2)] * 2,
                                        [1.0, 1.0], 1.0, "")
    with pytest.raises(ValueError, match="overlaps"):
        torch.ops.pgap.subspace_perturb_([w], [w.view(-1)[:10].view(5, 2)], [1], [1.0], [0], [0], 1.0, "")
    assert torch.equal(w, before)
