"""pgap.finetune.memory.PeakMemory on the CPU: a run is charged only with what its own steps hold
resident, not with heap pages that an earlier run in the same process freed."""
import re
import sys
from pathlib import Path

import pytest
import torch

from pgap.finetune.memory import PeakMemory

STATUS = Path("/proc/self/status")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not STATUS.exists(),
                                reason="VmRSS/VmHWM need Linux's /proc")


def rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", STATUS.read_text()).group(1)) / 1024


def test_freed_heap_of_an_earlier_run_is_not_charged():
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB of heap chunks (not mmap'd)
    keep = blocks[-1]  # pins the heap's top, so glibc cannot shrink the heap by itself on free
    del blocks
    before = rss_mb()
    peak = PeakMemory(torch.device("cpu"))
    with peak.track():
        pass
    assert keep is not None
    assert peak.kind == "rss"
    # the ~200 MB freed above stayed resident until PeakMemory trimmed the heap
    assert peak.mb < before - 100, (peak.mb, before)


def test_peak_counts_what_a_step_holds():
    peak = PeakMemory(torch.device("cpu"))
    with peak.track():
        base = rss_mb()
    with peak.track():
        x = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        del x
    assert peak.mb >= base + 60
