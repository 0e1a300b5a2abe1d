"""Lazy access to the compiled module ``pgap_kernels._C``, remembering why it failed to load."""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Optional, Tuple

REBUILD_HINT = "rebuild it with `pip install -e .` (or `make test`) from the pgap-kernels checkout"


@functools.lru_cache(maxsize=None)
def load() -> Tuple[Optional[ModuleType], str]:
    """Return ``(module, "")`` or ``(None, reason)``; never raises."""
    try:
        from pgap_kernels import _C  # noqa: PLC0415  (lazy on purpose: import never needs _C)
    except ImportError as exc:  # not built, or built for another Python
        return None, f"pgap_kernels._C could not be imported ({exc}); {REBUILD_HINT}"
    return _C, ""


def build_info() -> dict:
    """What ``_C`` was built with (empty dict when it is missing)."""
    mod, _ = load()
    return dict(mod.build_info()) if mod is not None else {}
