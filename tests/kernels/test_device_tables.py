"""The launch-table cache's eviction (pgap_kernels.backends._device_tables), on the CPU: entries
are plain CPU tensors here, the logic is the one the CUDA path runs."""
import pytest
import torch

from pgap_kernels.backends import _device_tables as dt


@pytest.fixture
def cache(monkeypatch):
    monkeypatch.setattr(dt, "_cache", type(dt._cache)())
    monkeypatch.setattr(dt, "CACHE_ENTRIES", 4)
    return dt._cache


def _fill(cache, n, pinned=()):
    for i in range(n):
        t = torch.tensor([i])
        cache[(0, torch.int64, (i,))] = entry = dt._Entry(t, t)
        entry.pinned_for_graph = i in pinned


def test_evict_drops_the_oldest_entries_beyond_the_limit(cache):
    _fill(cache, 7)
    dt._evict()
    assert [k[2][0] for k in cache] == [3, 4, 5, 6]


def test_evict_keeps_graph_pinned_entries(cache):
    _fill(cache, 7, pinned={0, 2})
    dt._evict()
    assert [k[2][0] for k in cache] == [0, 2, 5, 6]
    assert dt.cache_info() == {"entries": 4, "graph_pinned": 2}


def test_evict_within_the_limit_keeps_everything(cache):
    _fill(cache, 4)
    dt._evict()
    assert len(cache) == 4


def test_evict_when_only_pinned_entries_are_left(cache):
    _fill(cache, 6, pinned=set(range(6)))
    dt._evict()
    assert len(cache) == 6
