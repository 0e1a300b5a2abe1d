"""``python -m pgap_kernels.info``: versions, build features and backends per device.

``python -m pgap_kernels.info --selftest`` also runs every backend's self-check
(:mod:`pgap_kernels.selftest`) on every visible device and prints a table of pass or fail and
time; it exits 1 if any check failed.
"""
from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from . import ROUNDING_VERSION, STREAM_VERSIONS, __version__, _native, selftest
from ._dispatch import AUTO_ORDER, backend_status


def triton_version() -> Optional[str]:
    """The installed triton's version, or None (imports triton: call it only when reporting)."""
    try:
        import triton  # noqa: PLC0415  (lazy on purpose: optional, ~1 s to import)
    except ImportError:
        return None
    return str(triton.__version__)


def report() -> str:
    """The text printed by ``python -m pgap_kernels.info``."""
    lines: List[str] = [
        f"pgap-kernels {__version__}  (random streams: "
        + ", ".join(f"{name} {version}" for name, version in STREAM_VERSIONS.items())
        + f"; stochastic rounding {ROUNDING_VERSION})",
        f"python       {sys.version.split()[0]} on {platform.machine()} {platform.system()}",
        f"torch        {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton       {triton_version() or 'not installed'}",
    ]
    _, reason = _native.load()
    info = _native.build_info()
    if info:
        cuda = (f"yes (archs {info['cuda_archs']}, runtime {info['cuda_runtime_version']})"
                if info["cuda"] else "no")
        lines += [f"_C           built; CUDA kernels: {cuda}",
                  f"host ISA     {info['host_isa']} (CPU supports: {', '.join(info['host_isas'])}; "
                  + (", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in info.get("host_isa_seconds", {}).items())
                     + " per 65536 bf16 elements, the fastest chosen)" if info.get("host_isa_seconds")
                     else "chosen by PGAP_HOST_ISA)")]
    else:
        lines.append(f"_C           missing: {reason}")
    devices = visible_devices()
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"GPU {i}        {torch.cuda.get_device_name(i)}")
    else:
        lines.append("GPU          none visible to torch")
    for dev in devices:
        lines.append(f"backends on {dev} (auto order: "
                     f"{' > '.join(AUTO_ORDER.get(dev.split(':')[0], ('reference',)))}):")
        for name, why in backend_status(dev).items():
            lines.append(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


def visible_devices() -> List[str]:
    """``cpu`` and every CUDA device torch sees."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + [f"cuda:{i}" for i in range(count)]


def selftest_report() -> Tuple[str, bool]:
    """(the table of every backend's self-check on every visible device, all passed).

    Backends that cannot run on a device are listed with the reason and count as neither; the
    reference backend is the oracle and is not checked. The checks are run afresh (not cached).
    """
    rows = [("device", "backend", "result", "first ms", "again ms", "detail")]
    ok = True
    for dev in visible_devices():
        for name, why in backend_status(dev).items():
            if why is not None:
                rows.append((dev, name, "n/a", "", "", why))
            elif name == "reference":
                rows.append((dev, name, "oracle", "", "", "the parity reference (not self-checked)"))
            else:
                first = selftest.run_checks(name, torch.device(dev))
                again = selftest.run_checks(name, torch.device(dev)) if first.passed else first
                ok &= first.passed and again.passed
                res = again if first.passed else first
                detail = f"{res.cases} cases" if res.passed else f"{res.op}, {res.case}: {res.error}"
                rows.append((dev, name, "PASS" if res.passed else "FAIL",
                             f"{first.seconds * 1e3:.1f}", f"{again.seconds * 1e3:.1f}", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    return "\n".join(lines), ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgap_kernels.info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--selftest", action="store_true",
                        help="run every backend's self-check on every visible device")
    args = parser.parse_args(argv)
    print(report())
    if not args.selftest:
        return 0
    table, ok = selftest_report()
    print("\nself-checks, run twice: the first includes loading and compiling kernels (Triton's "
          "JIT), which any first use pays; the second is the check itself")
    print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
