"""Group the problems of a low-rank call by shape, for batched GPU launches."""
from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Sequence, TypeVar

T = TypeVar("T")


def group_indices(items: Sequence[T], key: Callable[[T], Hashable]) -> Dict[Hashable, List[int]]:
    """Indices of ``items`` grouped by ``key(item)``, groups and members in first-seen order."""
    groups: Dict[Hashable, List[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return groups
