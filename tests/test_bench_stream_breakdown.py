"""bench/bench_stream_breakdown.py: it reads the host kernels' flags from CMakeLists.txt and its
C++ harness builds and runs with them (timings are not asserted)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import bench_stream_breakdown as bsb  # noqa: E402


def test_flags_come_from_cmakelists():
    flags = bsb.cmake_flags(BENCH.parent / "CMakeLists.txt")
    assert "-ffp-contract=off" in flags["generic"] and "-O3" in flags["generic"]
    assert "-mavx2" in flags["avx2"] and "-mavx512f" in flags["avx512"]
    assert all(f in flags["avx512"] for f in flags["generic"])


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_runs_every_isa_of_this_cpu():
    out = subprocess.run([sys.executable, str(BENCH / "bench_stream_breakdown.py"), "--repeats", "1",
                          "--no-csv"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "generic" in out.stdout and "vs add_" in out.stdout
