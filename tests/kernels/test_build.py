"""Packaging: lean import, the info command, and CUDA kernels compiled wherever nvcc is."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import pgap_kernels as pk
from pgap_kernels import _native

LEAN_IMPORT = textwrap.dedent("""
    import sys
    sys.modules["pgap_kernels._C"] = None  # as if never built
    sys.modules["triton"] = None           # as if not installed
    import torch, pgap_kernels as pk
    assert sys.modules["triton"] is None
    assert pk.available_backends("cpu") == ["reference"], pk.available_backends("cpu")
    z = pk.gaussian(5, 1)                      # automatic choice falls back to reference
    try:
        with pk.use_backend("native"):
            pk.gaussian(5, 1)
    except RuntimeError as e:
        assert "pgap_kernels._C could not be imported" in str(e) and "pip install -e ." in str(e), e
    else:
        raise AssertionError("native ran without _C")
    print("LEAN-OK", z.shape[0])
""")


def test_lean_import_without_C_triton_or_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PGAP_BACKEND="")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", LEAN_IMPORT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "LEAN-OK 5" in out.stdout
    assert "falling back" in out.stderr or "using backend 'reference'" in out.stderr  # one log line


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "pgap_kernels.info"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for needle in ("philox4x32-10/v1", "philox4x32-10-rademacher/v1", "splitmix64-u16/v2", "torch", "triton",
                   "backends on cpu", "native"):
        assert needle in out.stdout


def test_native_module_builds():
    lib, reason = _native.load()
    assert lib is not None, reason
    assert "native" in pk.available_backends("cpu")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: no CUDA build expected")
def test_cuda_kernels_built_when_nvcc_present():
    info = _native.build_info()
    assert info.get("cuda") is True, (
        "nvcc is on PATH but pgap_kernels._C was built without its CUDA kernels "
        "(PGAP_BUILD_CUDA=0 or CMake did not find nvcc)")
    lib, _ = _native.load()
    assert hasattr(lib, "cuda_perturb")


def test_import_does_not_load_triton():
    code = "import sys, pgap_kernels; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
