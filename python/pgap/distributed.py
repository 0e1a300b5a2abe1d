"""torch.distributed for the ZO optimizers: only scalar losses cross the network.

Every rank draws the same perturbations (same seeds by construction, checked once at the first
step), runs the closure on its own part of the batch, and all-reduces (Σ w·L, Σ w) after every
forward, so every rank sees the same global loss and applies the same update. A rank whose loss
is NaN/inf makes the global loss non-finite on every rank, so all ranks restore and raise together
instead of hanging.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Dict, List, NoReturn, Optional

import torch
import torch.distributed as dist

ProcessGroup = Any  # torch.distributed.ProcessGroup (not importable on every build)


def resolve_group(process_group: Optional[ProcessGroup]) -> Optional[ProcessGroup]:
    """``process_group``, else the default group when torch.distributed is initialized; None when
    there is nothing to communicate with (not initialized, or a world of one rank)."""
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        process_group = dist.group.WORLD
    return process_group if dist.get_world_size(process_group) > 1 else None


def comm_device(group: ProcessGroup) -> torch.device:
    """Where the group's collectives take their tensors: the current CUDA device for NCCL, else
    the CPU (gloo)."""
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class LossReducer:
    """Global mean loss of a forward: all-reduce of (w·L, w) in float64, 16 bytes per forward."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group
        self.device = comm_device(group)
        self.world_size = dist.get_world_size(group)
        self.bytes_sent = 0  # payload all-reduced so far (diagnostics, bench/steps/distributed.py)

    def mean(self, loss: float, weight: float) -> float:
        buf = torch.tensor([loss * weight, weight], dtype=torch.float64, device=self.device)
        dist.all_reduce(buf, group=self.group)
        self.bytes_sent += buf.numel() * buf.element_size()
        total, weights = buf.tolist()
        if weights <= 0:
            raise ValueError("the loss weights of all ranks sum to 0; a closure returning "
                             "(loss, weight) needs weight > 0 on at least one rank")
        return total / weights

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place all-reduce (sum) of a small tensor on its own device."""
        work = tensor if tensor.device == self.device else tensor.to(self.device)
        dist.all_reduce(work, group=self.group)
        self.bytes_sent += work.numel() * work.element_size()
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows of ``tensor`` (k_r × q, k_r may differ) in rank order."""
        world = self.world_size
        rows = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=self.device)
        counts = [torch.zeros_like(rows) for _ in range(world)]
        dist.all_gather(counts, rows, group=self.group)
        sizes = [int(c.item()) for c in counts]
        most = max(sizes)
        padded = torch.zeros((most,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=self.device)
        padded[:tensor.shape[0]] = tensor.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=self.group)
        self.bytes_sent += padded.numel() * padded.element_size() * (world - 1)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)]).to(tensor.device)


def fsdp_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The modules of ``model`` managed by FSDP2 (``fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard(modules: List[torch.nn.Module]) -> None:
    """Free FSDP2's unsharded parameters so the next forward all-gathers the shards we write.
    The root module keeps its parameters unsharded after a forward by default; without this a
    perturbation written into its shards would not reach the next forward."""
    for module in modules:
        module.reshard()


def exit_ranks(code: int = 0) -> NoReturn:
    """End this rank's process right after a barrier, without tearing gloo down: destroying the
    group or finalizing the interpreter while gloo's worker threads wind down aborted a rank now
    and then in our 2-rank tests ("terminate called without an active exception", about once in
    15 runs, under load). Once every rank has passed the barrier nothing is pending."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fingerprint(values: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same_on_all_ranks(group: ProcessGroup, values: Dict[str, Any]) -> None:
    """Raise ValueError on every rank if ``values`` (seed, step, hyperparameters, parameter names
    and global shapes) differ between ranks, naming the fields that differ."""
    world = dist.get_world_size(group)
    gathered: List[Optional[Dict[str, Any]]] = [None] * world
    dist.all_gather_object(gathered, {k: fingerprint(v) for k, v in values.items()}, group=group)
    differ = sorted({k for other in gathered for k in values if other and other.get(k) != gathered[0].get(k)})
    if differ:
        raise ValueError(f"ranks disagree on {differ} (rank {dist.get_rank(group)}: "
                         f"{ {k: values[k] for k in differ if k != 'parameters'} }); every rank must "
                         "build the optimizer with the same seed, hyperparameters and model")

