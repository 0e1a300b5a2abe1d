"""bench/kernels/stream_breakdown.py: it reads the host kernels' flags from CMakeLists.txt and its
C++ harness builds and runs with them (timings are not asserted)."""
import shutil
import subprocess

import pytest

from conftest import ROOT, bench_command

from bench.kernels import stream_breakdown as bsb


def test_flags_come_from_cmakelists():
    flags = bsb.cmake_flags(ROOT / "CMakeLists.txt")
    assert "-ffp-contract=off" in flags["generic"] and "-O3" in flags["generic"]
    assert "-mavx2" in flags["avx2"] and "-mavx512f" in flags["avx512"]
    assert all(f in flags["avx512"] for f in flags["generic"])


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_runs_every_isa_of_this_cpu():
    out = subprocess.run([*bench_command("kernels.stream_breakdown"), "--repeats", "1",
                          "--no-csv"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "generic" in out.stdout and "vs add_" in out.stdout and "rademacher" in out.stdout
