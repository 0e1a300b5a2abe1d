"""Launch tables on the GPU without blocking the host.

A launch needs a few small int64/float32 tables on the device (tensor pointers, sizes, keys,
seeds, coefficients). ``torch.tensor(rows).to(device)`` copies from pageable memory, which
waits for every kernel already queued on the stream (the forward pass): the host stalls on each
op, and the op cannot be captured in a CUDA graph. :func:`on_device` instead

* looks the table up by its values (a tuple of Python numbers: no tensor is built on a hit) in a
  small per-process cache of device copies: a ZO loop passes the same parameters every step, so
  its pointer tables are copied once; and
* on a miss, stages the table in pinned memory and copies it with ``non_blocking=True``
  (stream-ordered; the pinned buffer stays referenced by the cache entry, so it outlives the copy
  and a graph replay of that copy).

Entries are read only by kernels. A cached table may be read by kernels on several streams:
``record_stream`` tells the caching allocator about each. An entry created or used while a
CUDA graph is being captured is never evicted (the graph keeps reading its address).
CPU tensors (the Triton interpreter) are returned unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import islice
from typing import Dict, Sequence, Tuple, Union

import torch

CACHE_ENTRIES = 512  # per process; a table is a few hundred bytes to a few KiB

Rows = Sequence[Union[int, float, Sequence[Union[int, float]]]]
_Key = Tuple[int, torch.dtype, tuple]


class _Entry:
    __slots__ = ("host", "device", "streams", "pinned_for_graph")

    def __init__(self, host: torch.Tensor, device: torch.Tensor) -> None:
        self.host = host          # pinned staging copy (kept: a captured copy replays from it)
        self.device = device
        self.streams = set()      # streams whose kernels read it (record_stream done)
        self.pinned_for_graph = False


_cache: "OrderedDict[_Key, _Entry]" = OrderedDict()


def on_device(rows: Rows, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(rows, dtype=dtype)`` on ``device`` (a flat list of numbers, or a rectangular
    list of lists), for kernels queued on the current stream of ``device`` from now on; never
    waits for the GPU. Do not write to the result. On a CPU device: a new CPU tensor."""
    if device.type != "cuda":
        return torch.tensor(rows, dtype=dtype, device=device)
    frozen = tuple(tuple(r) for r in rows) if rows and isinstance(rows[0], (list, tuple)) else tuple(rows)
    if dtype.is_floating_point:  # by bit pattern: 0.0 and -0.0 are equal keys but not equal tables
        frozen = tuple(float(x).hex() for x in frozen)
    key: _Key = (device.index if device.index is not None else torch.cuda.current_device(), dtype,
                 frozen)
    stream = torch.cuda.current_stream(device)
    entry = _cache.get(key)
    if entry is None:
        host = torch.tensor(rows, dtype=dtype).pin_memory()
        entry = _Entry(host, host.to(device, non_blocking=True))
        entry.streams.add(stream.cuda_stream)
        _cache[key] = entry
        _evict()
    else:
        _cache.move_to_end(key)
        if stream.cuda_stream not in entry.streams:
            entry.device.record_stream(stream)
            entry.streams.add(stream.cuda_stream)
    if torch.cuda.is_current_stream_capturing():
        entry.pinned_for_graph = True
    return entry.device


def _evict() -> None:
    """Drop the least recently used entries beyond CACHE_ENTRIES (graph-pinned ones stay)."""
    excess = len(_cache) - CACHE_ENTRIES
    if excess <= 0:
        return
    # Stop at the first ``excess`` evictable entries (oldest first): listing all CACHE_ENTRIES
    # on every miss cost ~0.1 ms per call once per-step tables (seeds, coefficients) filled it.
    for key in list(islice((k for k, e in _cache.items() if not e.pinned_for_graph), excess)):
        del _cache[key]


def cache_info() -> Dict[str, int]:
    """Entries and graph-pinned entries in the cache (for tests and diagnostics)."""
    return {"entries": len(_cache), "graph_pinned": sum(e.pinned_for_graph for e in _cache.values())}
