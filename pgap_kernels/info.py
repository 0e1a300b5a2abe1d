"""``python -m pgap_kernels.info``: versions, build features and backends per device."""
from __future__ import annotations

import platform
import sys
from typing import List, Optional

import torch

from . import STREAM_VERSION, __version__, _native
from ._dispatch import AUTO_ORDER, backend_status


def triton_version() -> Optional[str]:
    """The installed triton's version, or None (imports triton: call it only when reporting)."""
    try:
        import triton  # noqa: PLC0415
    except ImportError:
        return None
    return str(triton.__version__)


def report() -> str:
    """The text printed by ``python -m pgap_kernels.info``."""
    lines: List[str] = [
        f"pgap-kernels {__version__}  (random stream {STREAM_VERSION})",
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
                  f"host ISA     {info['host_isa']} (CPU supports: {', '.join(info['host_isas'])})"]
    else:
        lines.append(f"_C           missing: {reason}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
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


if __name__ == "__main__":
    print(report())
