"""PerturbedManyPlan: perturbed_many on tensors validated once. Bit for bit what perturbed_many
writes on every backend (dtypes, odd and mixed sizes, empty tensors and lists, both
distributions, a mean term), call after call with new seeds; bad seeds/coefficients refused
naming the argument before any write; a tensor resized, re-allocated, retyped or re-strided after
preparing refused (StalePlanError) before any write; the op path under a torch-function mode."""
import math

import pytest
import torch

import pgap_kernels as pk

from test_perturbed import CARRY, COEFFS, SEEDS, bits, device_backend, values  # noqa: F401

SIZES_DTYPES = [(1, torch.float32), (3, torch.bfloat16), (0, torch.float16), (4097, torch.float32),
                ((7, 5), torch.bfloat16), (4097, torch.float16), (3, torch.float16),
                (1, torch.bfloat16)]
KEYS = [3, 0xFFFFFFFF, 9, 9, 1, 2, 77, 5]
OFFSETS = [0, CARRY, 5, 1 << 40, 11, 0, 3, 1]


def _tensors(device, seed=0, sizes=SIZES_DTYPES):
    return [values(size, dtype, device, seed=seed + p) for p, (size, dtype) in enumerate(sizes)]


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_equals_perturbed_many_call_after_call(device_backend, distribution):
    device, backend = device_backend
    xs, means = _tensors(device), _tensors(device, seed=100)
    before = [x.clone() for x in xs]
    calls = [(7, 1e-3, 0.0), (SEEDS, COEFFS, -0.25), (SEEDS[:2], COEFFS[:2], 0.0), ([], [], 1.5)]
    for mean in (None, means):
        with pk.use_backend(backend):
            plan = pk.PerturbedManyPlan(xs, keys=KEYS, offsets=OFFSETS, mean=mean,
                                        distribution=distribution)
            outs = plan.out
            for seeds, coeffs, mean_coeff in calls:
                mean_coeff = mean_coeff if mean is not None else 0.0
                ys = plan(seeds, coeffs, mean_coeff=mean_coeff)
                expected = pk.perturbed_many(xs, seeds, coeffs, keys=KEYS, offsets=OFFSETS,
                                             mean=mean, mean_coeff=mean_coeff,
                                             distribution=distribution)
                assert all(y is o for y, o in zip(ys, outs)), "a call writes the plan's outs"
                for p, (y, e) in enumerate(zip(ys, expected)):
                    assert y.shape == e.shape and y.dtype == e.dtype and y.device == e.device
                    assert torch.equal(bits(y), bits(e)), (seeds, mean_coeff, p)
    for b, x in zip(before, xs):
        assert torch.equal(bits(b), bits(x)), "the plan wrote a source"


def test_given_outs_empty_lists_and_properties():
    xs = _tensors("cpu", sizes=[(5, torch.float32), (0, torch.bfloat16), (9, torch.float16)])
    outs = [torch.empty_like(x) for x in xs]
    plan = pk.PerturbedManyPlan(xs, keys=[4, 5, 6], offsets=[1, 2, 3], out=outs)
    assert plan.out == outs and plan.tensors == xs and plan.mean is None
    assert plan.keys == [4, 5, 6] and plan.offsets == [1, 2, 3] and plan.distribution == "gaussian"
    ys = plan([1, 2], [0.5, -0.5])
    assert all(y is o for y, o in zip(ys, outs))
    assert torch.equal(ys[2], pk.perturbed(xs[2], [1, 2], [0.5, -0.5], key=6, offset=3))
    empty = pk.PerturbedManyPlan([])
    assert empty(1, 1.0) == [] and empty.out == []
    with pytest.raises(ValueError, match=r"coeffs\[0\] must be finite"):
        empty(1, math.nan)  # the per-call checks run even with nothing to write


def test_sources_updated_in_place_are_read_and_versions_bump():
    x = values(33, torch.float32)
    plan = pk.PerturbedManyPlan([x], keys=[2])
    first = plan(5, 1.0)[0].clone()
    x.mul_(2.0)  # an optimizer step: in place, same memory
    version = plan.out[0]._version
    second = plan(5, 1.0)[0]
    assert torch.equal(second, pk.perturbed(x, 5, 1.0, key=2))
    assert not torch.equal(first, second)
    assert plan.out[0]._version > version


class PassThrough(torch.overrides.TorchFunctionMode):
    """A torch-function mode that changes nothing: ops must go through the dispatcher."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_op_path_under_a_torch_function_mode_equals_the_fast_path():
    xs = _tensors("cpu", sizes=[(6, torch.float32), (11, torch.bfloat16)])
    means = _tensors("cpu", seed=9, sizes=[(6, torch.float32), (11, torch.bfloat16)])
    plan = pk.PerturbedManyPlan(xs, keys=[1, 2], mean=means)
    fast = [y.clone() for y in plan([3, 4], [0.1, 0.2], mean_coeff=0.5)]
    with PassThrough():
        slow = plan([3, 4], [0.1, 0.2], mean_coeff=0.5)
    for a, b in zip(fast, slow):
        assert torch.equal(bits(a), bits(b))


def _assert_call_rejected(plan, exc, match, *args, **kwargs):
    """``plan(*args, **kwargs)`` raises ``exc`` and writes none of its outs."""
    outs = plan.out
    before = [bits(o).clone() for o in outs]
    with pytest.raises(exc, match=match):
        plan(*args, **kwargs)
    for b, o in zip(before, outs):
        assert torch.equal(b, bits(o)), "an out was written"


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_bad_per_call_input_is_refused_before_any_write(backend):
    xs = _tensors("cpu", sizes=[(12, torch.float32), (5, torch.bfloat16)])
    with pk.use_backend(backend):
        plan = pk.PerturbedManyPlan(xs)
        with_mean = pk.PerturbedManyPlan(xs, mean=[x.clone() for x in xs])
        _assert_call_rejected(plan, ValueError, r"seeds\[0\] must lie in", -1, 1.0)
        _assert_call_rejected(plan, ValueError, r"seeds\[1\] must lie in", [1, 1 << 64], [1.0, 1.0])
        _assert_call_rejected(plan, TypeError, r"seeds\[0\] must be an int", [1.5], [1.0])
        _assert_call_rejected(plan, TypeError, "seeds must be a sequence", "7", 1.0)
        _assert_call_rejected(plan, ValueError, "seeds has 2 entries but coeffs has 1", [1, 2], [1.0])
        _assert_call_rejected(plan, ValueError, r"coeffs\[1\] must be finite", [1, 2], [1.0, math.nan])
        _assert_call_rejected(plan, TypeError, r"coeffs\[0\] must be a real number", [1], ["x"])
        _assert_call_rejected(plan, ValueError, "mean_coeff is nonzero but mean is None", 1, 1.0,
                              mean_coeff=0.5)
        _assert_call_rejected(with_mean, ValueError, "mean_coeff must be finite", 1, 1.0,
                              mean_coeff=math.inf)


def test_bad_tensors_are_refused_when_preparing():
    x, y = values(12, torch.float32), values(5, torch.bfloat16, seed=1)
    big = values(40, torch.float32, seed=2)
    with pytest.raises(TypeError, match=r"tensors\[1\] has dtype torch.int64"):
        pk.PerturbedManyPlan([x, torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="keys has 1 entries but tensors has 2"):
        pk.PerturbedManyPlan([x, y], keys=[0])
    with pytest.raises(ValueError, match=r"out\[1\] overlaps out\[0\]"):
        pk.PerturbedManyPlan([x, x.clone()], out=[big[24:36], big[28:40]])
    with pytest.raises(ValueError, match="overlaps"):
        pk.PerturbedManyPlan([x], out=[x])
    with pytest.raises(ValueError, match="distribution must be one of"):
        pk.PerturbedManyPlan([x], distribution="uniform")


def _replace_data(t, new):
    t.data = new


CHANGES = {  # what happens to one tensor of the plan after it was prepared
    "resized larger (re-allocated)": lambda t: t.resize_(4097),
    "resized smaller (same pointer)": lambda t: t.resize_(3),
    "given another storage": lambda t: t.set_(torch.zeros(12)),
    "given new .data": lambda t: _replace_data(t, t.data.clone()),
    "given new .data of another dtype": lambda t: _replace_data(t, t.data.to(torch.bfloat16)),
    "restrided in place": lambda t: t.as_strided_((12,), (0,)),
}


@pytest.mark.parametrize("which", ["tensors", "out", "mean"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_tensor_changed_after_preparing_is_refused_before_any_write(which, change):
    xs = [values(12, torch.float32), values(7, torch.float32, seed=1)]
    plan = pk.PerturbedManyPlan([torch.nn.Parameter(x, requires_grad=False) for x in xs], keys=[1, 2],
                                mean=[values(12, torch.float32, seed=2), values(7, torch.float32, seed=3)])
    assert plan.stale() is None
    plan(1, 1.0, mean_coeff=0.5)
    target = {"tensors": plan.tensors, "out": plan.out, "mean": plan.mean}[which][0]
    with torch.no_grad():
        CHANGES[change](target)
    assert plan.stale().startswith(f"{which}[0] changed since the plan was prepared")
    _assert_call_rejected(plan, pk.StalePlanError, rf"{which}\[0\] changed since the plan was "
                          "prepared .*make a new PerturbedManyPlan", 1, 1.0, mean_coeff=0.5)
