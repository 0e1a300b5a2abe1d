"""Bad arguments to subspace_perturb_ raise TypeError/ValueError naming the argument, before any
matrix is modified (also on the torch.library path)."""
import pytest
import torch

import pgap_kernels as pk


def good():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(6, 5, generator=g), torch.randn(4, 3, generator=g)], \
        [torch.randn(5, 2, generator=g), torch.randn(3, 4, generator=g)]


def bad_cases():
    (w0, w1), (v0, v1) = good()
    meta = torch.device("meta")
    big = (1 << 63) - 6 * 2  # offset + m*r reaches 2**63 for w0 (m*r = 12)
    return [
        # (id, (tensors, bases, seeds, coeffs, kwargs), exception, message)
        ("tensors not a sequence", (w0.tolist()[0][0], [v0], 1, 1.0, {}), TypeError, "tensors"),
        ("tensor not a tensor", ([w0.tolist()], [v0], 1, 1.0, {}), TypeError, r"tensors\[0\] must be a torch.Tensor"),
        ("single tensor, list of bases", (w0, [v0], 1, 1.0, {}), TypeError, "bases must be a single tensor"),
        ("lengths", ([w0, w1], [v0], 1, 1.0, {}), ValueError, "bases has 1 matrices but tensors has 2"),
        ("1-D tensor", ([w0[0]], [v0], 1, 1.0, {}), ValueError, r"tensors\[0\] must be a 2-D matrix"),
        ("3-D tensor", ([w0.view(2, 3, 5)], [v0], 1, 1.0, {}), ValueError, "2-D"),
        ("int tensor", ([w0.int()], [v0], 1, 1.0, {}), TypeError, r"tensors\[0\] has dtype torch.int32"),
        ("float64 tensor", ([w0.double()], [v0], 1, 1.0, {}), TypeError, "dtype"),
        ("strided tensor", ([w0.T], [torch.randn(6, 2)], 1, 1.0, {}), ValueError, "contiguous"),
        ("basis not a tensor", ([w0], [v0.tolist()], 1, 1.0, {}), TypeError, r"bases\[0\] must be a torch.Tensor"),
        ("basis bfloat16", ([w0], [v0.bfloat16()], 1, 1.0, {}), TypeError, r"bases\[0\] has dtype torch.bfloat16; expected float32"),
        ("basis float64", ([w0], [v0.double()], 1, 1.0, {}), TypeError, "bases"),
        ("basis 1-D", ([w0], [v0[:, 0]], 1, 1.0, {}), ValueError, r"bases\[0\] must be a 2-D matrix"),
        ("basis rows", ([w0], [v1], 1, 1.0, {}), ValueError, r"expected a basis \(n, r\) = \(5, r\)"),
        ("rank zero", ([w0], [v0[:, :0]], 1, 1.0, {}), ValueError, "rank r .* at least 1"),
        ("basis device", ([w0], [v0.to(meta)], 1, 1.0, {}), ValueError, "device"),
        ("seed negative", ([w0], [v0], -1, 1.0, {}), ValueError, "seeds"),
        ("seed too large", ([w0], [v0], 1 << 64, 1.0, {}), ValueError, "seeds"),
        ("seed float", ([w0], [v0], 1.5, 1.0, {}), TypeError, "seeds"),
        ("seed/coeff lengths", ([w0], [v0], [1, 2], [1.0], {}), ValueError, "equal lengths"),
        ("coeff nan", ([w0], [v0], 1, float("nan"), {}), ValueError, "finite"),
        ("coeff str", ([w0], [v0], 1, "1", {}), TypeError, "coeffs"),
        ("keys length", ([w0, w1], [v0, v1], 1, 1.0, {"keys": [0]}), ValueError, "keys has 1"),
        ("key too large", ([w0], [v0], 1, 1.0, {"keys": [1 << 32]}), ValueError, r"keys\[0\]"),
        ("offsets length", ([w0], [v0], 1, 1.0, {"offsets": [0, 0]}), ValueError, "offsets has 2"),
        ("offset negative", ([w0], [v0], 1, 1.0, {"offsets": [-1]}), ValueError, r"offsets\[0\]"),
        ("offset + m*r past 2**63", ([w0], [v0], 1, 1.0, {"offsets": [big + 1]}), ValueError, r"offsets\[0\]"),
        ("decay inf", ([w0], [v0], 1, 1.0, {"decay": float("inf")}), ValueError, "decay"),
        ("decay str", ([w0], [v0], 1, 1.0, {"decay": "1"}), TypeError, "decay"),
        ("listed twice", ([w0, w1, w0], [v0, v1, v0], 1, 1.0, {}), ValueError, "appears twice"),
        ("overlapping views", ([w0[:4], w0[3:]], [v0, v0], 1, 1.0, {}), ValueError, "overlaps"),
        ("basis inside a tensor", ([w0], [w0.view(-1)[:10].view(5, 2)], 1, 1.0, {}), ValueError, r"overlaps"),
    ]


@pytest.mark.parametrize("path", ["eager", "op"])
@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_arguments_leave_every_tensor_untouched(case, path, monkeypatch):
    _, (tensors, bases, seeds, coeffs, kwargs), exc, match = case
    if path == "op":  # the torch.library op, as under torch.compile or a dispatch mode
        monkeypatch.setattr("pgap_kernels.subspace.plain_eager_call", lambda tensors: False)
    listed = tensors if isinstance(tensors, list) else [tensors]
    before = [t.clone() if isinstance(t, torch.Tensor) else t for t in listed]
    with pytest.raises(exc, match=match):
        pk.subspace_perturb_(tensors, bases, seeds, coeffs, **kwargs)
    for t, b in zip(listed, before):
        if isinstance(t, torch.Tensor):
            assert torch.equal(t, b)


def test_largest_offset_is_accepted():
    w, v = torch.zeros(2, 3), torch.randn(3, 2)
    pk.subspace_perturb_(w, v, 1, 1.0, offsets=[(1 << 63) - 5])  # indices up to 2**63 - 2
    assert torch.isfinite(w).all() and w.abs().sum() > 0


def test_empty_lists_are_a_no_op():
    pk.subspace_perturb_([], [], 1, 1.0)
