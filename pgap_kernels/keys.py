"""Stream keys from tensor names: the key that identifies a tensor in every pass.

``perturb_`` draws tensor p's noise under ``keys[p]``; without ``keys=`` the key is the tensor's
position in the list of that call. Positions identify tensors only while every call passes the
same list in the same order: split one model's parameters over several calls (weight-decay
groups, a layer at a time) and the second call's first tensor gets key 0 again, i.e. another
tensor's z, silently. Keys derived from names identify a tensor in any call, any order, any
subset. The ``pgap`` optimizers key their parameters this way (docs/optimizers.md).
"""
from __future__ import annotations

from typing import Dict, Iterable, List

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a hash of ``text``'s UTF-8 bytes, in [0, 2**32) (a valid stream key)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    h = _FNV_OFFSET
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def name_keys(names: Iterable[str]) -> List[int]:
    """The stream key of each name: ``fnv1a32(name)``, in the order given.

    Pass ``keys=name_keys(names)`` with the tensors of those names to ``perturb_`` (and to the
    other ops that take ``keys``) so that each tensor draws the same z in every call, whatever
    list it is in. These are the keys ``pgap.MeZO`` and the other ``pgap`` optimizers use for a
    model's ``named_parameters()``.

    Raises
    ------
    TypeError
        If ``names`` is a str or not iterable, or a name is not a str.
    ValueError
        If a name repeats, or two names hash to the same key (the message names both).
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(f"names must be a sequence of str, got {type(names).__name__}")
    keys: List[int] = []
    owner: Dict[int, str] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"names[{i}] must be a str, got {type(name).__name__}")
        key = fnv1a32(name)
        if key in owner:
            if owner[key] == name:
                raise ValueError(f"names[{i}] {name!r} appears twice; each tensor needs its own name")
            raise ValueError(f"names {owner[key]!r} and {name!r} hash to the same stream key; "
                             "rename one of them")
        owner[key] = name
        keys.append(key)
    return keys
