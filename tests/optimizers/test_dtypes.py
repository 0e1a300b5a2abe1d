"""pgap.dtypes: bf16 forwards from float32 weights where the device computes bf16 natively,
float32 elsewhere, with a reason."""
import pytest
import torch

from pgap import dtypes


def test_explicit_names_win():
    for name in dtypes.DTYPES:
        assert dtypes.resolve_dtype(name, "cpu") == (name, "chosen with --dtype")
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of fp32, bf16, fp16, bf16-mixed; got 'fp64'"):
        dtypes.resolve_dtype("fp64", "cpu")


@pytest.mark.parametrize("amx,avx512bf16,expected", [
    (True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "fp32")])
def test_cpu_auto_follows_native_bf16(monkeypatch, amx, avx512bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512bf16)
    dtype, why = dtypes.resolve_dtype("auto", "cpu")
    assert dtype == expected and why.startswith("auto: this CPU")


def test_this_machine_reports_what_torch_sees():
    fast, why = dtypes.native_bf16("cpu")
    assert fast == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert why


def test_describe_names_weights_and_forwards():
    assert dtypes.describe("bf16") == "bfloat16" and dtypes.describe("fp32") == "float32"
    assert dtypes.describe("bf16-mixed") == "bf16-mixed (float32 weights, bfloat16 forwards)"


def test_compute_context_is_autocast_without_cast_cache():
    with dtypes.compute_context(None, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with dtypes.compute_context(torch.bfloat16, "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert not torch.is_autocast_cache_enabled()
    assert not torch.is_autocast_enabled("cpu")
