"""pgap.dtypes: bf16 where the device computes in it natively, float32 elsewhere, with a reason."""
import pytest
import torch

from pgap import dtypes


def test_explicit_names_win():
    for name in dtypes.DTYPES:
        assert dtypes.resolve_dtype(name, "cpu") == (name, "chosen with --dtype")
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of fp32, bf16, fp16, bf16-mixed; got 'fp64'"):
        dtypes.resolve_dtype("fp64", "cpu")


@pytest.mark.parametrize("amx,avx512bf16,expected", [
    (True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_cpu_auto_follows_native_bf16(monkeypatch, amx, avx512bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512bf16)
    dtype, why = dtypes.resolve_dtype("auto", "cpu")
    assert dtype == expected and why.startswith("auto: this CPU")


def test_this_machine_reports_what_torch_sees():
    fast, why = dtypes.native_bf16("cpu")
    assert fast == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert why
