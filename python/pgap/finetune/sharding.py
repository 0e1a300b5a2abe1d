"""FSDP2 for ``transformers`` causal LMs: shard every decoder block and the root with
``fully_shard``, and gather the full state dict back for saving."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..distributed import comm_device


def block_modules(model: nn.Module) -> List[nn.Module]:
    """The model's repeated blocks: modules whose class is listed in ``_no_split_modules``
    (``transformers``' own list, e.g. ``LlamaDecoderLayer``)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"found no decoder blocks to shard in {type(model).__name__} "
                         f"(_no_split_modules = {sorted(names)})")
    return blocks


def shard_model(model: nn.Module, blocks: Optional[Sequence[nn.Module]] = None) -> nn.Module:
    """``fully_shard`` each of ``blocks`` (default :func:`block_modules`), then the root, over all
    ranks of the default group (CPU mesh for gloo, CUDA mesh for NCCL). Parameters become
    Shard(0) DTensors in place."""
    import torch.distributed as dist  # noqa: PLC0415
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    mesh = init_device_mesh(comm_device(dist.group.WORLD).type, (dist.get_world_size(),))
    for block in block_modules(model) if blocks is None else blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU on rank 0 (empty on the other ranks). A collective:
    every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: PLC0415

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
