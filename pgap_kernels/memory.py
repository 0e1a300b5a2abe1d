"""Peak memory of one call, and the glibc settings that make it measurable (tests, benchmarks).

Kept apart from :mod:`pgap_kernels.testing` (tolerances), which the backend self-check imports
when a backend first runs: the library itself never loads this module.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Optional

import torch

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
TIMING_MMAP_THRESHOLD = 32 << 20  # where glibc's dynamic threshold settles in a long-running process
MEMORY_MMAP_THRESHOLD = 64 << 10


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def pin_mmap_threshold(nbytes: int) -> bool:
    """Make glibc serve every allocation of ``nbytes`` or more with its own mmap, returned to the
    OS when freed. Timing runs with TIMING_MMAP_THRESHOLD (a warmed-up process); the memory
    measurement lowers it so that the peak RSS of a call sees its temporaries (otherwise freed
    heap memory is silently reused and a temporary adds nothing to the peak). True on success."""
    try:
        return bool(_libc().mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so reusing them counts in RSS."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_added_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes one call of ``fn`` adds at its peak to what the process held before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        pin_mmap_threshold(MEMORY_MMAP_THRESHOLD)
        release_free_memory()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _proc_status("VmRSS")
        fn()
        return max(0, _proc_status("VmHWM") - before)
    except (OSError, RuntimeError):
        return None
    finally:
        pin_mmap_threshold(TIMING_MMAP_THRESHOLD)
