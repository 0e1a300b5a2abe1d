"""ZO steps on 1 and 2 CPU ranks (gloo): data parallel and FSDP2, time and bytes per step.

Configurations, each in its own spawned processes (gloo over a file rendezvous, 120 s timeout):

* ``1 process``: the whole batch on one process with ``--threads`` threads (default: all cores);
* ``DP x2``: 2 ranks, each with half the batch, the full model and ``threads // 2`` threads; only
  the losses are all-reduced (``opt.reducer.bytes_sent``, measured);
* ``FSDP2 x2``: as DP, with every decoder layer and the root wrapped by ``fully_shard`` (each
  rank holds half of every parameter; FSDP2 all-gathers the parameters for every forward).

The model is a random-init Llama (``--model``, configs from bench/steps/zo_step.py) on a fixed batch
of random tokens (``--batch`` sequences of ``--seq`` tokens in all). Each method runs ``--warmup``
untimed steps (they include P-GAP's probe phase: ``--window`` is larger than the run) and then
``--steps`` timed steps; the table gives the median step time.

Bytes per step and rank: ``ours`` is measured (the float64 payload our optimizer all-reduces);
the others are computed from the parameter sizes: FSDP2's all-gather receives (W−1)/W of the
parameters per forward, and first-order DDP would all-reduce the gradient (a ring all-reduce
sends 2(W−1)/W of the gradient's bytes per rank per step).

Example::

    python -m bench.steps.distributed --model tiny --steps 2 --no-csv --no-plot
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from bench import common
from bench.common import build_model

from pgap.distributed import exit_ranks
from pgap.finetune.sharding import shard_model

CONFIGS = (("1 process", 1, False), ("DP x2", 2, False), ("FSDP2 x2", 2, True))
FIELDS = ["model", "method", "config", "ranks", "sharded", "threads_per_rank", "batch", "seq",
          "params", "step_ms", "step_ms_iqr", "speedup_vs_1", "forwards_per_step",
          "ours_bytes_per_step", "fsdp_allgather_bytes_per_step", "ddp_grad_bytes_per_step",
          "param_MiB_per_rank"]


def optimizer(method: str, model, window: int):
    import pgap  # noqa: PLC0415

    if method == "mezo":
        return pgap.MeZO(model, lr=1e-6, eps=1e-3)
    return pgap.PGAP(model, lr=1e-3, eps=1e-3, rank=8, window=window, probes=4)


def sent(opt) -> int:
    """Bytes the optimizer has all-reduced so far (0 on one process)."""
    return opt.reducer.bytes_sent if opt.reducer else 0


def worker(rank: int, world: int, init: str, out: str, cfg: Dict[str, Any]) -> None:
    """One rank: build, (shard), warm up, time ``steps`` steps; rank 0 saves the numbers."""
    import torch.distributed as dist  # noqa: PLC0415

    torch.set_num_threads(cfg["threads"])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
    model = build_model(cfg["model"], torch.device("cpu"), torch.float32)
    if cfg["sharded"]:
        shard_model(model)
    for p in model.parameters():
        p.requires_grad_(True)
    ids = torch.randint(0, model.config.vocab_size, (cfg["batch"], cfg["seq"]),
                        generator=torch.Generator().manual_seed(0))
    mine = ids[rank::world]
    opt = optimizer(cfg["method"], model, cfg["warmup"] + cfg["steps"] + 1)

    def closure():
        return model(input_ids=mine, labels=mine).loss, mine.shape[0]

    times: List[float] = []
    for step in range(cfg["warmup"] + cfg["steps"]):
        if world > 1:
            dist.barrier()
        if step == cfg["warmup"]:
            forwards0, bytes0 = opt.forwards, sent(opt)
        t0 = time.perf_counter()
        opt.step(closure)
        if step >= cfg["warmup"]:
            times.append((time.perf_counter() - t0) * 1e3)
    local_bytes = sum(t.local.numel() * t.local.element_size() for t in opt.trainables)
    if rank == 0:
        torch.save({"times": times, "forwards": (opt.forwards - forwards0) / cfg["steps"],
                    "ours": (sent(opt) - bytes0) / cfg["steps"],
                    "params": sum(p.numel() for p in model.parameters()),
                    "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                    "local_bytes": local_bytes}, Path(out) / "result.pt")
    if world > 1:
        exit_ranks(0)


def run_config(cfg: Dict[str, Any], world: int) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(r, world, os.path.join(tmp, "init"), tmp, cfg))
                 for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(900)
        if any(p.exitcode != 0 for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"{cfg} failed: exit codes {[p.exitcode for p in procs]}")
        return torch.load(Path(tmp) / "result.pt")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", choices=["tiny", "smollm2-135m"])
    p.add_argument("--methods", default="mezo,pgap")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads of the 1-process run; each of W ranks gets threads // W")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "distributed.csv")
    p.add_argument("--plot", type=Path, default=common.RESULTS_DIR / "distributed.png")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(device="cpu")  # gloo ranks on the CPU
    args = p.parse_args(argv)
    common.require("bench/steps/distributed.py", ("transformers",), plot=not args.no_plot)
    _, meta = common.start_timing_run(args)
    rows = []
    for method in args.methods.split(","):
        print(f"\n== {method}: {args.model}, batch {args.batch}x{args.seq}, median of {args.steps} steps")
        print(f"{'config':<10} {'threads':>7} {'step ms':>9} {'speedup':>8} {'fwd/step':>8} "
              f"{'ours B':>7} {'FSDP2 AG B':>12} {'DDP grad B':>12} {'MiB/rank':>9}")
        base = None
        for name, world, sharded in CONFIGS:
            threads = max(1, args.threads // world)
            cfg = dict(model=args.model, method=method, sharded=sharded, batch=args.batch,
                       seq=args.seq, steps=args.steps, warmup=args.warmup, threads=threads)
            res = run_config(cfg, world)
            ms = statistics.median(res["times"])
            base = ms if base is None else base
            share = (world - 1) / world
            fsdp = res["forwards"] * share * res["param_bytes"] if sharded else 0.0
            ddp = 2 * share * res["param_bytes"]
            row = dict(model=args.model, method=method, config=name, ranks=world, sharded=sharded,
                       threads_per_rank=threads, batch=args.batch, seq=args.seq, params=res["params"],
                       step_ms=round(ms, 1), step_ms_iqr=round(common.iqr(res["times"]), 1),
                       speedup_vs_1=round(base / ms, 3), forwards_per_step=res["forwards"],
                       ours_bytes_per_step=res["ours"], fsdp_allgather_bytes_per_step=int(fsdp),
                       ddp_grad_bytes_per_step=int(ddp) if world > 1 else 0,
                       param_MiB_per_rank=round(res["local_bytes"] / 2**20, 1))
            rows.append(row)
            print(f"{name:<10} {threads:>7} {ms:>9.1f} {base / ms:>8.2f} {res['forwards']:>8.1f} "
                  f"{res['ours']:>7.0f} {fsdp:>12.3g} {row['ddp_grad_bytes_per_step']:>12.3g} "
                  f"{row['param_MiB_per_rank']:>9.1f}")
    common.write_outputs(args, meta, FIELDS, rows, args.plot, lambda path: plot(rows, path))
    return 0


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    methods = sorted({r["method"] for r in rows}, key=[r["method"] for r in rows].index)
    names = [c[0] for c in CONFIGS]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ms = [next(r["step_ms"] for r in rows if r["method"] == m and r["config"] == n) for n in names]
        ax1.bar([x + i * width for x in range(len(names))], ms, width, label=m)
    ax1.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(names))], names)
    ax1.set_ylabel("step time (ms, median)")
    ax1.set_title(f"{rows[0]['model']}: ZO step on the CPU", fontsize=9)
    ax1.legend(fontsize=7)
    kinds = [("ours (losses, measured)", "ours_bytes_per_step"),
             ("FSDP2 param all-gather", "fsdp_allgather_bytes_per_step"),
             ("first-order DDP gradient", "ddp_grad_bytes_per_step")]
    for i, (label, key) in enumerate(kinds):
        vals = [next(r[key] for r in rows if r["config"] == n and r["method"] == methods[0]) or float("nan")
                for n in names[1:]]
        ax2.bar([x + i * 0.27 for x in range(len(names) - 1)], vals, 0.27, label=label)
    ax2.set_xticks([x + 0.27 for x in range(len(names) - 1)], names[1:])
    ax2.legend(fontsize=7)
    ax2.set_yscale("log")
    ax2.set_ylabel("bytes per step and rank")
    ax2.set_title(f"communication per step ({methods[0]})", fontsize=9)
    common.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
