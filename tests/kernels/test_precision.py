"""``ieee_float32``: the library's float32 products ignore the user's TF32 / matmul-precision
setting and leave it as it was (issue 24, item 3). On this CPU torch.mm does not switch to bf16
under "medium" (MKL's sgemm), so the accuracy side is checked on a GPU
(tests/kernels/test_gpu_paths.py); here the settings themselves and the results' independence."""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels._precision import ieee_float32
from pgap_kernels.backends import _device_tables

MODS = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)


@pytest.fixture
def restore_precision():
    saved = [m.fp32_precision for m in MODS]
    yield
    for m, value in zip(MODS, saved):
        m.fp32_precision = value


@pytest.mark.parametrize("legacy", ["high", "medium"])
def test_ieee_inside_and_the_users_setting_after(restore_precision, legacy):
    torch.set_float32_matmul_precision(legacy)
    before = [m.fp32_precision for m in MODS]
    with ieee_float32():
        assert [m.fp32_precision for m in MODS] == ["ieee", "ieee"]
    assert [m.fp32_precision for m in MODS] == before
    assert torch.get_float32_matmul_precision() == legacy  # the legacy view is still consistent
    with pytest.raises(RuntimeError, match="boom"):
        with ieee_float32():
            raise RuntimeError("boom")
    assert [m.fp32_precision for m in MODS] == before


def test_new_api_setting_left_alone(restore_precision):
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    W, U, Z, V = torch.randn(9, 7), torch.randn(9, 3), torch.randn(3, 2), torch.randn(7, 2)
    with pk.use_backend("reference"):
        pk.lowrank_perturb_(W, U, Z, V, 0.5)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_results_do_not_depend_on_the_setting(restore_precision, backend):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 96, generator=g)
    U, Z, V = torch.randn(64, 8, generator=g), torch.randn(8, 8, generator=g), torch.randn(96, 8, generator=g)
    outs = []
    for precision in ("highest", "medium"):
        torch.set_float32_matmul_precision(precision)
        w = W.clone()
        with pk.use_backend(backend):
            pk.lowrank_perturb_(w, U, Z, V, 0.25, decay=0.5)
            sketch = pk.gaussian_sketch(64, 96, [3], [1.0], V, key=1)
        outs.append((w, sketch))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_device_tables_on_the_cpu_are_plain_tensors():
    table = _device_tables.on_device([[0, 1, 2], [3, 4, 5]], torch.int64, torch.device("cpu"))
    assert torch.equal(table, torch.arange(6, dtype=torch.int64).view(2, 3))
    coeffs = _device_tables.on_device([0.5, -0.0], torch.float32, torch.device("cpu"))
    assert coeffs.dtype == torch.float32 and str(coeffs[1].item()) == "-0.0"
