"""Save and load optimizer states as safetensors files (tensors + JSON metadata)."""
from __future__ import annotations

import json
import os
from typing import Union

from .base import ZOOptimizer

PathLike = Union[str, "os.PathLike[str]"]
_META_KEY = "pgap_state"


def save_optimizer(optimizer: ZOOptimizer, path: PathLike) -> None:
    """Write ``optimizer.state_dict()`` to ``path``: its tensors as safetensors tensors, the rest
    as JSON in the file's metadata. Functional-mode P-GAP and AGZO merge their pending updates
    into the weights first, except inside ``optimizer.unmerged()``, where the file carries them
    (save the model's weights in the same block)."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {k: v.cpu() for k, v in state.pop("tensors").items()}
    save_file(tensors, os.fspath(path), metadata={_META_KEY: json.dumps(state)})


def load_optimizer(optimizer: ZOOptimizer, path: PathLike) -> None:
    """Restore ``optimizer`` from a file written by :func:`save_optimizer`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if _META_KEY not in meta:
        raise ValueError(f"{os.fspath(path)!r} is not a pgap optimizer state (no {_META_KEY!r} metadata)")
    state = json.loads(meta[_META_KEY])
    state["tensors"] = load_file(os.fspath(path))
    optimizer.load_state_dict(state)
