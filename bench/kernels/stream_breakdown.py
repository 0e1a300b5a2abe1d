"""Where a host perturbation pass spends its time: Philox words, Box-Muller, the apply loop.

Compiles bench/kernels/cpp/stream_breakdown.cpp once per instruction set this CPU runs (generic, avx2,
avx512) with the flags CMakeLists.txt gives the host kernels (read from it, so the two cannot
drift), runs each on a 2^24-element float32 tensor on one thread, and prints the three phases in
ms and per element beside the yardstick of issue 23: an in-place ``w.add_(o)`` of the same size
(two reads and a write), timed here on one torch thread. Needs a C++ compiler (``c++``/``g++``).

The numbers say which part of the stream contract (docs/rng.md: Philox4x32-10, Box-Muller with
fixed polynomials, no FMA contraction) a faster kernel would have to change: the apply loop is
memory-bound, the other two are arithmetic. A second row per instruction set (``distribution``
rademacher) times the Rademacher stream the same way: its Philox words (one block per 128
elements instead of per 4), the sign expansion (``signs_ms``, in place of Box-Muller) and the
apply loop.

Example::

    python -m bench.kernels.stream_breakdown
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from bench import common

SOURCE = Path(__file__).resolve().parent / "cpp" / "stream_breakdown.cpp"
NUMEL = 1 << 24
FIELDS = ["isa", "numel", "philox_ms", "boxmuller_ms", "apply_ms", "total_ms", "add_ms",
          "total_vs_add", "philox_ns_per_element", "boxmuller_ns_per_element", "distribution",
          "signs_ms"]


def cmake_flags(cmake: Path) -> Dict[str, List[str]]:
    """The host kernels' compile flags per ISA, as CMakeLists.txt sets them."""
    text = cmake.read_text()
    common_flags = re.search(r"set\(PGAP_HOST_FLAGS ([^)]*)\)", text).group(1).split()
    flags = {"generic": common_flags}
    for isa in ("avx2", "avx512"):
        m = re.search(rf"perturb_{isa}\.cpp[^\n]*PROPERTIES\s*\n\s*COMPILE_OPTIONS \"([^\"]*)\"", text)
        if m:
            flags[isa] = common_flags + m.group(1).split(";")
    return flags


def run_isa(isa: str, flags: List[str], compiler: str, workdir: Path) -> Dict[str, float]:
    exe = workdir / f"breakdown_{isa}"
    root = common.REPO_ROOT
    subprocess.run([compiler, "-std=c++17", *flags, f"-DPGAP_ISA_NS={isa}", f"-I{root / 'csrc' / 'include'}",
                    f"-I{root / 'csrc'}", str(SOURCE), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", out)}


def add_ms(repeats: int) -> float:
    torch.set_num_threads(1)
    w, o = torch.randn(NUMEL), torch.randn(NUMEL)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        w.add_(o)
        times.append((time.perf_counter() - t0) * 1e3)
    return common.median(times[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="runs of each binary (median)")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "stream_breakdown.csv")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        print("bench_stream_breakdown: no C++ compiler on PATH (c++ or g++)")
        return 2
    meta = common.run_metadata()
    from pgap_kernels import _native  # noqa: PLC0415
    supported = _native.build_info().get("host_isas", ["generic"])
    flags = cmake_flags(common.REPO_ROOT / "CMakeLists.txt")
    yardstick = add_ms(args.repeats)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for isa in [i for i in flags if i in supported]:
            runs = [run_isa(isa, flags[isa], compiler, Path(tmp)) for _ in range(args.repeats)]
            med = {k: common.median([r[k] for r in runs]) for k in runs[0]}
            total = med["philox_ms"] + med["boxmuller_ms"] + med["apply_ms"]
            rows.append(dict(isa=isa, numel=NUMEL, philox_ms=med["philox_ms"],
                             boxmuller_ms=med["boxmuller_ms"], apply_ms=med["apply_ms"], total_ms=total,
                             add_ms=yardstick, total_vs_add=total / yardstick,
                             philox_ns_per_element=med["philox_ms"] * 1e6 / NUMEL,
                             boxmuller_ns_per_element=med["boxmuller_ms"] * 1e6 / NUMEL,
                             distribution="gaussian", signs_ms=""))
            total = med["rademacher_philox_ms"] + med["signs_ms"] + med["rademacher_apply_ms"]
            rows.append(dict(isa=isa, numel=NUMEL, philox_ms=med["rademacher_philox_ms"],
                             boxmuller_ms="", apply_ms=med["rademacher_apply_ms"], total_ms=total,
                             add_ms=yardstick, total_vs_add=total / yardstick,
                             philox_ns_per_element=med["rademacher_philox_ms"] * 1e6 / NUMEL,
                             boxmuller_ns_per_element="", distribution="rademacher",
                             signs_ms=med["signs_ms"]))
    print(f"one thread, {NUMEL} float32 elements, median of {args.repeats}; w.add_(o): {yardstick:.2f} ms")
    print(f"{'isa':<9}{'stream':<12}{'philox':>9}{'transform':>11}{'apply':>8}{'total':>8}{'vs add_':>9}")
    for r in rows:
        transform = r["boxmuller_ms"] if r["distribution"] == "gaussian" else r["signs_ms"]
        print(f"{r['isa']:<9}{r['distribution']:<12}{r['philox_ms']:>9.2f}{transform:>11.2f}"
              f"{r['apply_ms']:>8.2f}{r['total_ms']:>8.2f}{r['total_vs_add']:>8.2f}x")
    print("transform: Box-Muller (gaussian) or the sign expansion (rademacher)")
    if not args.no_csv:
        common.append_csv(args.csv, list(meta) + FIELDS,
                          [{**meta, **{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()}}
                           for r in rows])
        print(f"CSV rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
