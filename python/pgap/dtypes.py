"""Which precision a run uses when the user does not say: ``bf16-mixed`` (float32 weights, every
forward under bf16 autocast) where the device computes bf16 matrix products natively, else
float32. Pure bf16 weights (exact ZO training in them: functional views + stochastic rounding)
halve the weights' memory but cost accuracy (docs/results.md, "bf16 against float32 on the real
task"), so they are only chosen with ``--dtype bf16``."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional, Tuple, Union

import torch

# the weights' dtype of each precision name
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-mixed": torch.float32}
# the names whose forwards compute in another dtype than the weights' (torch.autocast)
COMPUTE = {"bf16-mixed": torch.bfloat16}
# why auto takes bf16-mixed, not bf16, measured (docs/results.md, "bf16 against float32 on the real task")
MIXED_WHY = ("float32 weights with bf16 forwards: bf16 weights trailed float32 by 2.5 points at 1,200 "
             "forwards on SmolLM2 / Rotten Tomatoes, bf16 forwards from float32 weights did not; "
             "--dtype bf16 halves the weights' memory, --dtype fp32 computes in float32")


def native_bf16(device: Union[str, torch.device]) -> Tuple[bool, str]:
    """Whether ``device`` computes bf16 matrix products natively, and why (one phrase).

    CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and newer). CPU:
    AVX512-BF16 or AMX tiles (oneDNN then runs bf16 GEMMs natively; measured 2.8x faster than
    float32 for SmolLM2's forward on an AVX512-BF16 EPYC). Other devices: no.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} computes in bf16 natively"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return True, "this CPU has AMX tiles (native bf16 matrix products)"
        if torch.cpu._is_avx512_bf16_supported():
            return True, "this CPU has AVX512-BF16 (native bf16 matrix products)"
        return False, "this CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated, slower)"
    return False, f"no bf16 rule for {device.type} devices"


def resolve_dtype(name: str, device: Union[str, torch.device]) -> Tuple[str, str]:
    """``name`` ("auto" or a key of :data:`DTYPES`) resolved to a key of :data:`DTYPES`, and the
    reason for it."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {', '.join(DTYPES)}; got {name!r}")
        return name, "chosen with --dtype"
    fast, why = native_bf16(device)
    if not fast:
        return "fp32", f"auto: {why}"
    return "bf16-mixed", f"auto: {why}; {MIXED_WHY}"


def describe(name: str) -> str:
    """What precision ``name`` (a key of :data:`DTYPES`) means, in words: "bfloat16", or
    "bf16-mixed (float32 weights, bfloat16 forwards)"."""
    def plain(dtype: torch.dtype) -> str:
        return str(dtype).replace("torch.", "")

    if name not in COMPUTE:
        return plain(DTYPES[name])
    return f"{name} ({plain(DTYPES[name])} weights, {plain(COMPUTE[name])} forwards)"


def compute_context(compute: Optional[torch.dtype], device: Union[str, torch.device]) -> ContextManager:
    """The context a forward runs in for compute dtype ``compute`` (None: a no-op): autocast on
    ``device``'s type without its cast cache, so weights changed in place between two forwards
    (a ZO step's ±ε·z) are cast again, never reused from the first forward."""
    if compute is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=compute, cache_enabled=False)
