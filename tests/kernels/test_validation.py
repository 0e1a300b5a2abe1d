"""Bad input raises TypeError/ValueError naming the argument, and modifies nothing."""
import math

import numpy as np
import pytest
import torch

import pgap_kernels as pk


def fresh():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, generator=g), torch.randn(3, 2, generator=g)]


def assert_rejected(exc, match, tensors, *args, **kwargs):
    before = [t.clone() if isinstance(t, torch.Tensor) else t for t in tensors]
    means = kwargs.get("mean")
    means_before = [m.clone() for m in means] if isinstance(means, list) else None
    with pytest.raises(exc, match=match):
        pk.perturb_(tensors, *args, **kwargs)
    for b, t in zip(before, tensors):
        assert not isinstance(t, torch.Tensor) or torch.equal(b, t), "a tensor was modified"
    if means_before is not None:
        for b, m in zip(means_before, means):
            assert torch.equal(b, m)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_bad_input(backend):
    with pk.use_backend(backend):
        t = fresh()
        assert_rejected(ValueError, r"tensors\[2\] must be contiguous",
                        t + [torch.zeros(4, 4).t()], 1, 1.0)
        assert_rejected(TypeError, r"tensors\[2\] has dtype torch.int64",
                        t + [torch.zeros(3, dtype=torch.int64)], 1, 1.0)
        assert_rejected(TypeError, r"tensors\[2\] has dtype torch.bool",
                        t + [torch.zeros(3, dtype=torch.bool)], 1, 1.0)
        assert_rejected(TypeError, r"tensors\[2\] has dtype torch.float64",
                        t + [torch.zeros(3, dtype=torch.float64)], 1, 1.0)
        assert_rejected(TypeError, r"tensors\[1\] must be a torch.Tensor", [t[0], [1.0]], 1, 1.0)
        assert_rejected(ValueError, r"seeds has 2 entries but coeffs has 1", t, [1, 2], [1.0])
        assert_rejected(ValueError, r"seeds\[1\] must lie in \[0, 18446744073709551616\)",
                        t, [1, 1 << 64], [1.0, 1.0])
        assert_rejected(ValueError, r"seeds\[0\] must lie in", t, -1, 1.0)
        assert_rejected(TypeError, r"seeds\[0\] must be an int", t, [1.5], [1.0])
        assert_rejected(TypeError, r"seeds\[0\] must be an int", t, [True], [1.0])
        assert_rejected(ValueError, r"coeffs\[0\] must be finite", t, 1, math.nan)
        assert_rejected(ValueError, r"coeffs\[1\] must be finite", t, [1, 2], [1.0, -math.inf])
        assert_rejected(TypeError, r"coeffs\[0\] must be a real number", t, [1], ["x"])
        assert_rejected(ValueError, r"keys\[1\] must lie in \[0, 4294967296\)", t, 1, 1.0,
                        keys=[0, 1 << 32])
        assert_rejected(ValueError, r"keys\[0\] must lie in", t, 1, 1.0, keys=[-1, 0])
        assert_rejected(ValueError, r"keys has 1 entries but tensors has 2", t, 1, 1.0, keys=[0])
        assert_rejected(ValueError, r"offsets\[1\] must lie in", t, 1, 1.0, offsets=[0, -4])
        assert_rejected(ValueError, r"offsets\[0\] must lie in", t, 1, 1.0, offsets=[(1 << 63) - 2, 0])
        assert_rejected(ValueError, r"offsets has 3 entries", t, 1, 1.0, offsets=[0, 0, 0])
        assert_rejected(ValueError, r"decay must be finite", t, 1, 1.0, decay=math.inf)
        assert_rejected(ValueError, r"mean_coeff must be finite", t, 1, 1.0,
                        mean=[torch.zeros(5), torch.zeros(3, 2)], mean_coeff=math.nan)
        assert_rejected(ValueError, r"mean\[1\] has shape \(6,\), expected \(3, 2\)", t, 1, 1.0,
                        mean=[torch.zeros(5), torch.zeros(6)], mean_coeff=1.0)
        assert_rejected(TypeError, r"mean\[0\] has dtype torch.bfloat16", t, 1, 1.0,
                        mean=[torch.zeros(5, dtype=torch.bfloat16), torch.zeros(3, 2)], mean_coeff=1.0)
        assert_rejected(ValueError, r"mean\[1\] must be contiguous", t, 1, 1.0,
                        mean=[torch.zeros(5), torch.zeros(2, 3).t()], mean_coeff=1.0)
        assert_rejected(ValueError, r"mean has 1 tensors but tensors has 2", t, 1, 1.0,
                        mean=[torch.zeros(5)], mean_coeff=1.0)
        assert_rejected(ValueError, r"mean_coeff is nonzero but mean is None", t, 1, 1.0,
                        mean_coeff=0.5)


def test_iterables_accepted_strings_rejected():
    lin = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in lin.parameters()]
    pk.perturb_(lin.parameters(), (s for s in [1, 2]), [1.0, 2.0])  # generators are fine
    assert all(not torch.equal(b, p) for b, p in zip(before, lin.parameters()))
    with pytest.raises(TypeError, match="keys must be a sequence, got str"):
        pk.perturb_(lin.parameters(), 1, 1.0, keys="ab")
    with pytest.raises(TypeError, match="tensors must be a sequence, got int"):
        pk.perturb_(3, 1, 1.0)


def test_mixed_devices_rejected():
    t = [torch.zeros(3), torch.zeros(3, device="meta")]
    with pytest.raises(ValueError, match=r"tensors\[1\] is on meta but tensors\[0\] is on cpu"):
        pk.perturb_(t, 1, 1.0)
    assert (t[0] == 0).all()


@pytest.mark.gpu
def test_mixed_cpu_cuda_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    t = [torch.zeros(3, device="cuda"), torch.zeros(3)]
    with pytest.raises(ValueError, match=r"tensors\[1\] is on cpu but tensors\[0\] is on cuda"):
        pk.perturb_(t, 1, 1.0)
    assert (t[0] == 0).all()


def test_gaussian_bad_input():
    with pytest.raises(TypeError, match="dtype has dtype torch.int32"):
        pk.gaussian(3, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"seeds\[0\] must lie in"):
        pk.gaussian(3, 1 << 64)
    with pytest.raises(ValueError, match="key must lie in"):
        pk.gaussian(3, 1, key=1 << 32)
    with pytest.raises(ValueError, match="offset must lie in"):
        pk.gaussian(3, 1, offset=-1)
    with pytest.raises(ValueError, match="shape must have non-negative sizes"):
        pk.gaussian((2, -1), 1)


def test_bad_backend_names():
    with pytest.raises(ValueError, match="backend name must be one of"):
        with pk.use_backend("cudnn"):
            pass


def test_env_backend(monkeypatch):
    monkeypatch.setenv("PGAP_BACKEND", "nope")
    with pytest.raises(ValueError, match="PGAP_BACKEND must be one of"):
        pk.perturb_([torch.zeros(2)], 1, 1.0)
    monkeypatch.setenv("PGAP_BACKEND", "cuda")
    t = torch.zeros(2)
    with pytest.raises(RuntimeError, match="backend 'cuda' was requested for cpu but cannot run"):
        pk.perturb_([t], 1, 1.0)
    assert (t == 0).all()
    with pk.use_backend("reference"):  # the context manager wins over the environment
        pk.perturb_([t], 1, 1.0)
    assert (t != 0).all()


@pytest.mark.parametrize("device,backend", [("cpu", "reference"), ("cpu", "native"),
                                            ("cpu", "triton"),
                                            pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                                            pytest.param("cuda", "triton", marks=pytest.mark.gpu)])
def test_overlapping_tensors_rejected(device, backend):
    """A tensor listed twice, overlapping views, or a mean sharing memory with a written tensor
    would race inside one launch (reference would apply them in order): rejected on every
    backend, on the public and the op path, nothing written."""
    from conftest import require  # noqa: PLC0415

    require(device, backend)
    g = torch.Generator().manual_seed(3)
    t = torch.randn(40, generator=g).to(device)
    other = torch.randn(40, generator=g).to(device)
    with pk.use_backend(backend):
        assert_rejected(ValueError, "same tensor, which appears twice", [t, t], 1, 1.0)
        assert_rejected(ValueError, "overlaps", [t[:25], t[20:]], 1, 1.0)
        assert_rejected(ValueError, "overlaps", [t.view(5, 8), other, t[8:16]], 1, 1.0)
        assert_rejected(ValueError, "overlaps", [t, other], 1, 1.0, mean=[other, t[:40]],
                        mean_coeff=0.5)
        assert_rejected(ValueError, "overlaps", [t[:20]], 1, 1.0, mean=[t[10:30]], mean_coeff=0.5)
        before = t.clone()
        with pytest.raises(ValueError, match="appears twice"):
            torch.ops.pgap.perturb_([t, t], [], [1], [1.0], [0, 1], [0, 0], 1.0, 0.0, "")
        assert torch.equal(t, before)
        # read-only means may share memory with each other
        pk.perturb_([t[:20], t[20:]], 1, 1.0, mean=[other[:20], other[:20]], mean_coeff=0.5)
        assert not torch.equal(t, before)


# Coefficients given as tensors or numpy values (issue 26 item 4): MeZO computes g as a tensor.
HOST_SCALARS = [
    pytest.param(lambda c: torch.tensor(c), id="0-d tensor"),
    pytest.param(lambda c: torch.tensor([c]), id="1-element tensor"),
    pytest.param(lambda c: torch.tensor([[c]], dtype=torch.float64), id="1x1 float64 tensor"),
    pytest.param(lambda c: np.float32(c), id="numpy float32"),
    pytest.param(lambda c: np.array(c), id="0-d numpy array"),
]


def _ops_with_coefficient(c):
    """Each public op that takes coeffs or scale, called with coefficient ``c`` on fresh inputs;
    returns what it wrote."""
    g = torch.Generator().manual_seed(3)
    W, U, Z, V = (torch.randn(*s, generator=g) for s in ((6, 4), (6, 2), (2, 2), (4, 2)))
    t = torch.zeros(7)
    pk.perturb_(t, 11, c)
    pk.lowrank_perturb_(W, U, Z, V, c)
    S = torch.zeros(5, 4)
    pk.subspace_perturb_(S, torch.randn(4, 2, generator=g), 5, c)
    return {"perturb_": t, "perturbed": pk.perturbed(torch.zeros(7), 11, c),
            "lowrank_perturb_": W, "subspace_perturb_": S,
            "gaussian_sketch": pk.gaussian_sketch(5, 4, 9, c, torch.ones(4, 3), key=0, offset=0,
                                                  transpose=False),
            "GaussianSum": pk.GaussianSum(5, 4, [9], [c], key=0).materialize()}


@pytest.mark.parametrize("make", HOST_SCALARS)
def test_cpu_tensor_and_numpy_coefficients_act_as_numbers(make):
    expected = _ops_with_coefficient(0.375)
    got = _ops_with_coefficient(make(0.375))
    for op, value in expected.items():
        assert torch.equal(got[op], value), op
    # inside a list, and a 1-D tensor as the list of coefficients
    a, b = torch.zeros(9), torch.zeros(9)
    pk.perturb_(a, [1, 2], [0.5, -0.25])
    pk.perturb_(b, [1, 2], [make(0.5), -0.25])
    assert torch.equal(a, b)
    b.zero_()
    pk.perturb_(b, [1, 2], torch.tensor([0.5, -0.25]))
    assert torch.equal(a, b)


def test_tensor_coefficient_off_the_cpu_asks_for_item():
    # A meta tensor stands for a CUDA one: reading either would be a host synchronization.
    ts = fresh()
    assert_rejected(TypeError, r"coeffs\[0\] is a tensor on meta; pass a Python number: g\.item\(\)",
                    ts, 1, torch.tensor(0.5, device="meta"))
    W, U, Z, V = torch.zeros(6, 4), torch.ones(6, 2), torch.ones(2, 2), torch.ones(4, 2)
    with pytest.raises(TypeError, match=r"scale\[0\] is a tensor on meta; .*\.item\(\)"):
        pk.lowrank_perturb_(W, U, Z, V, torch.tensor(0.5, device="meta"))
    assert not W.any()


def test_bad_tensor_coefficients_rejected():
    ts = fresh()
    assert_rejected(TypeError, r"coeffs\[0\] is a torch.bool tensor; expected a real number",
                    ts, 1, torch.tensor(True))
    assert_rejected(ValueError, r"coeffs is an array of shape \(2, 2\); expected one number or a 1-D",
                    ts, [1, 2], torch.ones(2, 2))
    assert_rejected(ValueError, r"coeffs\[0\] is a tensor of shape \(2,\); expected one number",
                    ts, [1], [torch.ones(2)])
    assert_rejected(ValueError, r"coeffs\[0\] must be finite", ts, 1, torch.tensor(float("nan")))
    assert_rejected(ValueError, "seeds has 1 entries but coeffs has 2", ts, 1, torch.ones(2))
    assert_rejected(TypeError, r"decay is a numpy array of dtype complex128; expected a real number",
                    ts, 1, 0.5, decay=np.array(1j))
