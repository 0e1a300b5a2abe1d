"""The trainable parameters a ZO optimizer tunes: names, stream keys and weight-decay flags."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._checks import check_choice
from .seeds import name_keys

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

DecayFilter = Callable[[str, torch.Tensor], bool]
MODE_CHOICES = ("auto", "inplace", "functional")
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Trainable:
    """One trainable parameter: qualified ``name``, the parameter, its stream ``key`` (FNV-1a of
    the name) and whether weight decay applies to it. For a sharded (FSDP2 DTensor) parameter,
    ``offset`` is the global element index of this rank's first local element and ``shape`` the
    global shape; for a plain tensor offset is 0 and shape its own."""
    name: str
    param: torch.Tensor
    key: int
    decays: bool
    offset: int = 0
    sharded: bool = False

    @property
    def shape(self) -> Tuple[int, ...]:
        """The global shape (a DTensor's ``shape`` is the unsharded one)."""
        return tuple(self.param.shape)

    @property
    def local(self) -> torch.Tensor:
        """The tensor this rank holds and writes (the DTensor's local shard, or the parameter)."""
        return self.param.to_local() if self.sharded else self.param

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2

    @property
    def row_offset(self) -> int:
        """First global row of the local shard of a matrix (0 when not sharded)."""
        return self.offset // self.shape[1] if self.shape[1] else 0


def local_tensor(p: torch.Tensor) -> torch.Tensor:
    """``p.to_local()`` for a DTensor (a view: writes reach the parameter), else ``p``."""
    return p.to_local() if is_dtensor(p) else p


def is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor  # noqa: PLC0415
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(p, DTensor)


def shard_offset(name: str, p: torch.Tensor) -> int:
    """Global element offset of the local shard of DTensor ``p``: it must be one contiguous block
    of rows (placements Shard(0) or Replicate, as FSDP2's ``fully_shard`` makes), so that the
    local elements carry global indices offset .. offset + local numel − 1."""
    from torch.distributed.tensor import Replicate, Shard  # noqa: PLC0415
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # noqa: PLC0415

    for placement in p.placements:
        if not (isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0)):
            raise ValueError(f"parameter {name!r} has placement {placement}; pgap optimizers "
                             "support DTensors sharded on dim 0 (FSDP2) or replicated")
    local_shape, global_offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh,
                                                                        p.placements)
    row_numel = 1
    for size in p.shape[1:]:
        row_numel *= size
    if tuple(local_shape[1:]) != tuple(p.shape[1:]) or any(global_offset[1:]):
        raise ValueError(f"parameter {name!r}: local shard {tuple(local_shape)} is not a block of "
                         f"whole rows of {tuple(p.shape)}")
    return int(global_offset[0]) * row_numel if p.dim() else 0


def pgap_decay_rule(name: str, param: torch.Tensor) -> bool:
    """pgap's weight-decay rule, the default of every optimizer and of ``pgap-finetune``: decay a
    parameter when it is at least 2-D and its name, lower-cased, contains neither "bias" nor
    "norm". It skips every bias and normalisation weight, Llama's ``model.norm.weight`` and
    ``*_layernorm.weight`` included. Not MeZO's rule (:func:`mezo_decay_rule`)."""
    lowered = name.lower()
    return param.dim() >= 2 and "bias" not in lowered and "norm" not in lowered


MEZO_NO_DECAY = ("bias", "layer_norm", "layernorm")


def mezo_decay_rule(name: str, param: torch.Tensor) -> bool:
    """MeZO's weight-decay rule exactly (``large_models/trainer.py``, ``zo_update``): decay a
    parameter unless its name contains "bias", "layer_norm" or "layernorm" (case-sensitive, any
    shape). On Llama it decays ``model.norm.weight``, which :func:`pgap_decay_rule` does not.
    Pass it as ``decay_filter=pgap.mezo_decay_rule``."""
    return not any(marker in name for marker in MEZO_NO_DECAY)


def collect_trainable(model: nn.Module, decay_filter: Optional[DecayFilter] = None) -> List[Trainable]:
    """Parameters of ``model`` with ``requires_grad=True`` in ``named_parameters`` order (tied
    parameters once, under their first name).

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or a parameter has an unsupported dtype.
    ValueError
        If there is no trainable parameter, a parameter is not contiguous, the parameters are on
        more than one device, or two names hash to the same key.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    decay_filter = decay_filter or pgap_decay_rule
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    keys = name_keys(name for name, _ in named)  # ValueError naming two names with one key
    found: List[Trainable] = []
    for (name, p), key in zip(named, keys):
        if p.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"parameter {name!r} has dtype {p.dtype}; expected float32, bfloat16 "
                            "or float16 (freeze it with requires_grad_(False) to leave it out)")
        local = local_tensor(p)
        if not local.is_contiguous():
            raise ValueError(f"parameter {name!r} is not contiguous; call .data = p.contiguous() "
                             "before building the optimizer")
        sharded = is_dtensor(p)
        offset = shard_offset(name, p) if sharded else 0
        found.append(Trainable(name, p, key, bool(decay_filter(name, p)), offset, sharded))
    if not found:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    devices = {t.local.device for t in found}
    if len(devices) > 1:
        raise ValueError(f"trainable parameters lie on several devices {sorted(map(str, devices))}; "
                         "pgap optimizers need them on one device")
    return found


def resolve_mode(mode: str, trainables: Sequence[Trainable], side_paths: bool = False,
                 weight_decay: float = 0.0, sharded_ok: bool = False) -> str:
    """"inplace" or "functional" for ``mode`` ("auto": functional when a trainable parameter is
    bf16/fp16, unless one is FSDP2-sharded and the optimizer is not ``sharded_ok``, or the
    optimizer has low-rank ``side_paths`` and weight decay; else in place)."""
    mode = check_choice(mode, "mode", MODE_CHOICES)
    if mode != "auto":
        return mode
    low = any(t.param.dtype in LOW_PRECISION for t in trainables)
    blocked = ((not sharded_ok and any(t.sharded for t in trainables)) or
               (side_paths and weight_decay > 0))
    return "functional" if low and not blocked else "inplace"
