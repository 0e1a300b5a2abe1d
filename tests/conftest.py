"""Test configuration: backends per device, GPU marks, Triton interpreter on CPU-only machines."""
import os
import sys
from pathlib import Path

import torch

# Triton runs on the CPU only through its interpreter, which must be chosen before any kernel is
# defined. On a GPU machine leave it off so the triton backend runs on the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import pgap_kernels as pk  # noqa: E402

GPU_REASON = "needs a CUDA device (run `make test-gpu` on a GPU machine)"
HAS_CUDA = torch.cuda.is_available()


ROOT = Path(__file__).resolve().parents[1]


def bench_command(module: str) -> list:
    """``python -m bench.<module>``'s command line; run it with ``cwd=ROOT`` (bench/ is a package
    of the checkout, run from its root: bench/README.md)."""
    return [sys.executable, "-m", f"bench.{module}"]


def backend_cases(include_reference: bool = False):
    """pytest params (device, backend) for every non-reference backend on every device kind."""
    cases = []
    for device, names in (("cpu", ("native", "triton")), ("cuda", ("cuda", "triton"))):
        names = names + (("reference",) if include_reference else ())
        for name in names:
            marks = [pytest.mark.gpu] if device == "cuda" else []
            cases.append(pytest.param((device, name), marks=marks, id=f"{device}-{name}"))
    return cases


def require(device: str, backend: str) -> None:
    """Skip (with the reason) when ``backend`` cannot run on ``device`` here."""
    if device == "cuda" and not HAS_CUDA:
        pytest.skip(GPU_REASON)
    reason = pk.backend_status(device)[backend]
    if reason is not None:
        pytest.skip(f"{backend} on {device}: {reason}")


# (device, backend) for the custom-op checks (opcheck): native and reference on the CPU, cuda and
# triton on a GPU.
OP_CASES = [("cpu", "native"), ("cpu", "reference"),
            pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
            pytest.param("cuda", "triton", marks=pytest.mark.gpu)]


@pytest.fixture(params=backend_cases())
def device_backend(request):
    device, backend = request.param
    require(device, backend)
    return device, backend


def is_triton_interpreter(device: str, backend: str) -> bool:
    return backend == "triton" and device == "cpu"


def on_every_host_isa(compute):
    """``compute()`` run under every instruction-set build of the native kernel (skipped
    without one), asserted to give identical tensors (bit patterns: compare integer views
    where NaNs occur) on all of them: the first build's results."""
    from pgap_kernels import _native

    lib, reason = _native.load()
    if lib is None:
        pytest.skip(reason)
    info = lib.build_info()
    results = {}
    try:
        for isa in info["host_isas"]:
            lib.set_host_isa(isa)
            results[isa] = compute()
    finally:
        lib.set_host_isa(info["host_isa"])
    first = next(iter(results.values()))
    for isa, res in results.items():
        for a, b in zip(res, first):
            assert torch.equal(a, b), isa
    return first
