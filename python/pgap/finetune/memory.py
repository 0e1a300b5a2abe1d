"""Peak memory of training steps, for comparing what methods need (pgap-finetune,
bench/experiments/compare.py).

On a CUDA device: ``torch.cuda.max_memory_allocated`` (tensor memory, reset before each tracked
block). On the CPU under Linux: the process's peak resident set size (VmHWM of
/proc/self/status, reset before each tracked block by writing 5 to /proc/self/clear_refs), i.e.
everything resident during the block: the weights, the optimizer's state, gradients,
activations, and the Python and torch runtime (a few hundred MB). A new ``PeakMemory`` first asks
glibc to return freed heap pages (``malloc_trim``): without it, a run that follows another in
the same process (bench/experiments/compare.py's queues) is charged with the pages its
predecessor freed but the allocator kept resident (measured: MeZO after AdamW 3,368 MB, alone
1,293 MB). Elsewhere the peak RSS since
the process started (``resource.getrusage``), which may include work before training.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import re
from pathlib import Path
from typing import Iterator, Optional

import torch

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _vm_hwm_kb() -> Optional[int]:
    try:
        found = re.search(r"VmHWM:\s+(\d+)\s*kB", STATUS.read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _trim_heap() -> None:
    """Return the heap's free pages to the OS (glibc's ``malloc_trim(0)``); no-op elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


def _reset_hwm() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """``with peak.track(): step()`` around each training step; ``peak.mb`` is the largest peak
    seen over the tracked blocks (evaluations outside them do not count) and ``peak.kind`` says
    what was measured: ``cuda_allocated``, ``rss`` or ``rss_since_start``."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        if self.device.type == "cuda":
            self.kind = "cuda_allocated"
        elif _vm_hwm_kb() is not None:
            _trim_heap()
            self.kind = "rss" if _reset_hwm() else "rss_since_start"
        else:
            self.kind = "rss_since_start"

    def _reset(self) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "rss":
            _reset_hwm()

    def _read(self) -> int:
        if self.kind == "cuda_allocated":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "rss":
            return (_vm_hwm_kb() or 0) * 1024
        import resource  # noqa: PLC0415

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self._reset()
        try:
            yield
        finally:
            self.peak_bytes = max(self.peak_bytes, self._read())

    @property
    def mb(self) -> float:
        return self.peak_bytes / 2**20
