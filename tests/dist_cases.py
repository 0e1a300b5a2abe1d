"""Rank side of tests/optimizers/test_distributed.py: each case runs on one rank of a gloo group (or, with
world == 1, as the single-process reference) and returns plain tensors and floats."""
from __future__ import annotations

import datetime
import math
import traceback
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch import nn

import pgap
from pgap.distributed import exit_ranks
from pgap.methods import build_optimizer

ROWS = 8  # examples in the full batch


def net(seed: int = 0) -> nn.Module:
    """Rows 5, 3 and 1 (odd, and a 1-row matrix: rank 1 of 2 holds none of it)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(ROWS, 6, generator=g), torch.randn(ROWS, 1, generator=g)


def rows_of(rank: int, world: int, uneven: bool) -> List[int]:
    if world == 1:
        return list(range(ROWS))
    cut = 3 if uneven else ROWS // 2
    return list(range(cut)) if rank == 0 else list(range(cut, ROWS))


def closure_for(model: nn.Module, rows: List[int], weighted: bool):
    x, y = data()
    x, y = x[rows], y[rows]

    def closure():
        loss = ((model(x) - y) ** 2).mean()
        return (loss, len(rows)) if weighted else loss
    return closure


def pair_closure_for(model: nn.Module, rows: List[int], weighted: bool):
    """:func:`closure_for`'s losses at both points from one forward over the rows stacked twice."""
    x, y = data()
    x, y = torch.cat([x[rows], x[rows]]), torch.cat([y[rows], y[rows]])

    def pair():
        losses = ((model(x) - y) ** 2).mean(dim=1).view(2, -1).mean(dim=1)
        return (losses, len(rows)) if weighted else losses
    return pair


def llama_and_closure(rank: int, world: int):
    """The tests' tiny Llama (tied embeddings: the root module owns embedding, final norm and
    head) on this rank's half of its 4 sequences."""
    from zo_problems import tiny_llama

    model, _ = tiny_llama()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    mine = ids if world == 1 else ids[rank * 2:(rank + 1) * 2]
    return model, lambda: model(input_ids=mine, labels=mine).loss


def shard(model: nn.Module) -> nn.Module:
    """fully_shard every Linear of the MLP (or every decoder layer of the Llama), then the root."""
    from pgap.finetune.sharding import shard_model

    blocks = None if hasattr(model, "model") else [m for m in model if isinstance(m, nn.Linear)]
    return shard_model(model, blocks)


def full_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter as a full tensor (all-gathered from the shards: a collective)."""
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().clone()
    return out


# -- cases ---------------------------------------------------------------------------------
def train(rank: int, world: int, method: str, options: Dict[str, Any], steps: int,
          sharded: bool = False, uneven: bool = False, weighted: bool = False, lr: float = 1e-2,
          seed: int = 0, eps: float = 1e-2, llama: bool = False, paired: bool = False) -> Dict[str, Any]:
    pair = None
    if llama:
        model, closure = llama_and_closure(rank, world)
    else:
        model = net()
        closure = closure_for(model, rows_of(rank, world, uneven), weighted)
        if paired:
            pair = pair_closure_for(model, rows_of(rank, world, uneven), weighted)
    if sharded and world > 1:
        model = shard(model)
    opt = build_optimizer(method, model, lr=lr, eps=eps, seed=seed, **options)
    losses = [opt.step(closure, pair_closure=pair) if pair else opt.step(closure) for _ in range(steps)]
    opt.merge()  # functional modes: the updates kept in the side paths
    out = {"losses": losses, "weights": full_weights(model), "forwards": opt.forwards}
    if hasattr(opt, "bases"):  # AGZO's activation bases
        out["bases"] = {b.name: b.V.clone() for b in opt.bases}
    if opt.reducer is not None:
        out["bytes"] = opt.reducer.bytes_sent
    return out


def perturb_once(rank: int, world: int, sharded: bool) -> Dict[str, Any]:
    """Weights after one full-dimensional perturbation pass (+0.5·z of seed 7)."""
    model = net()
    if sharded and world > 1:
        model = shard(model)
    opt = pgap.MeZO(model, lr=0.0)
    with torch.no_grad():
        opt.perturb(opt.trainables, [7], [0.5])
    return {"weights": full_weights(model),
            "offsets": {t.name: t.offset for t in opt.trainables}}


def seed_mismatch(rank: int, world: int) -> Dict[str, Any]:
    model = net()
    opt = pgap.MeZO(model, lr=1e-2, seed=rank)  # a different seed on each rank
    opt.step(closure_for(model, rows_of(rank, world, False), False))
    return {}


def nonfinite(rank: int, world: int) -> Dict[str, Any]:
    """Rank 1's second forward (at θ − ε·z) returns NaN."""
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = pgap.MeZO(model, lr=1e-2)
    inner = closure_for(model, rows_of(rank, world, False), False)
    calls = [0]

    def closure():
        calls[0] += 1
        return torch.tensor(math.nan) if rank == 1 and calls[0] == 2 else inner()
    try:
        opt.step(closure)
        raised = None
    except pgap.NonFiniteLossError as exc:
        raised = str(exc)
    drift = max(float((before[k] - v).abs().max()) for k, v in model.state_dict().items())
    return {"raised": raised, "drift": drift}


def interrupted(rank: int, world: int, method: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Every rank's closure raises at the second forward of step 1; each rank restores itself."""
    model = net()
    opt = build_optimizer(method, model, lr=1e-2, eps=1e-2, seed=0, **options)
    inner = closure_for(model, rows_of(rank, world, False), False)
    opt.step(inner)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("data error on this rank")
        return inner()
    try:
        opt.step(closure)
        raised = None
    except RuntimeError as exc:
        raised = str(exc)
    drift = max(float((before[k] - v).abs().max()) for k, v in model.state_dict().items())
    loss = opt.step(inner)  # the group still works: the next step's all-reduces match
    return {"raised": raised, "drift": drift, "steps": opt.steps_done, "loss": loss}


CASES = {"train": train, "perturb_once": perturb_once, "seed_mismatch": seed_mismatch,
         "nonfinite": nonfinite, "interrupted": interrupted}


def worker(rank: int, world: int, init_file: str, case: str, out_dir: str,
           kwargs: Dict[str, Any]) -> None:
    """Process entry: join the gloo group (60 s timeout), run ``case``, save its result (or the
    exception's type and message, restored flag included) to out_dir/rank{rank}.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        result: Dict[str, Any] = CASES[case](rank, world, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result = {"error": type(exc).__name__, "message": str(exc),
                  "traceback": traceback.format_exc()}
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    exit_ranks(0)
