"""P-GAP's perturbation scale on the real model (issue 22, item 1): |g| of the first steps of
P-GAP's probe and random subspaces against MeZO's, on the same batches.

    python -m bench.experiments.pgap_scale --steps 20 --dtype bf16 --threads 1
    python -m bench.experiments.pgap_scale --report     # the table of the CSV's rows

Every configuration starts from the embedded SmolLM2-135M and trains ``--steps`` steps of
pgap-finetune's training step (batch 8, Rotten Tomatoes, ``--seed``'s batches and optimizer seed)
and records the projected gradient g = (L+ - L-)/(2 eps) of each step from ``diagnostics()``.
With the same lr, a method whose |g| is MeZO's takes steps of MeZO's size (the update is
lr·g·P with E||P||² per coordinate 1 for both). Rows go to ``--csv`` (one per step), and a summary
per configuration (mean |g|, RMS g, and both relative to MeZO's) is printed; ``--report`` prints
it for every (configuration, seed) of the CSV, against MeZO at the same seed (the "-matrices"
variants against mezo-matrices).

Configurations (``--configs``): mezo; pgap-probe (default scale, sqrt(m·n)/r); pgap-probe-none
(the paper's scale="none", at the same lr); subzero (random subspace, no alignment, default
scale); pgap-random (random subspace with alignment). The "-matrices" variants freeze every
parameter that is not 2-D (norm weights, biases): g then holds the matrices' share only.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from bench.common import RESULTS_DIR, append_csv, require, run_metadata

PGAP_COMMON = {"rank": 8, "window": 50, "probes": 4}
CONFIGS: Dict[str, Dict[str, Any]] = {
    "mezo": {"method": "mezo"},
    "pgap-probe": {"method": "pgap", "subspace": "probe", **PGAP_COMMON},
    "pgap-probe-none": {"method": "pgap", "subspace": "probe", "scale": "none", **PGAP_COMMON},
    "subzero": {"method": "pgap", "subspace": "random", "align": False, **PGAP_COMMON},
    "pgap-random": {"method": "pgap", "subspace": "random", **PGAP_COMMON},
}
CONFIGS.update({f"{name}-matrices": dict(CONFIGS[name], freeze_vectors=True)
                for name in ("mezo", "pgap-probe", "pgap-probe-none", "subzero")})
FIELDS = ["config", "step", "g", "loss", "forwards", "lr", "eps", "seed", "dtype", "scale",
          "frozen_vectors",
          "git_rev", "timestamp"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["mezo", "pgap-probe", "pgap-probe-none"],
                   choices=sorted(CONFIGS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", type=Path, default=RESULTS_DIR / "pgap_scale.csv")
    p.add_argument("--report", action="store_true", help="print the CSV's summary and exit")
    return p.parse_args(argv)


def run_config(name: str, args: argparse.Namespace, task, meta: Dict[str, str]) -> List[Dict[str, Any]]:
    from pgap.finetune.models import load_causal_lm  # noqa: PLC0415
    from pgap.finetune.prompts import PromptClassifier  # noqa: PLC0415
    from pgap.finetune.train import Ranks, train_step  # noqa: PLC0415
    from pgap.methods import build_optimizer  # noqa: PLC0415

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    tokenizer, model = load_causal_lm(None, dtype)
    frozen = CONFIGS[name].get("freeze_vectors", False)
    for p in model.parameters():
        p.requires_grad_(p.dim() == 2 or not frozen)
    clf = PromptClassifier(tokenizer, task.template, task.label_words)
    options = {k: v for k, v in CONFIGS[name].items() if k not in ("method", "freeze_vectors")}
    if CONFIGS[name]["method"] == "pgap":
        options["total_steps"] = args.steps
    opt = build_optimizer(CONFIGS[name]["method"], model, lr=args.lr, eps=args.eps, seed=args.seed,
                          **options)
    rows, ranks = [], Ranks()
    for step in range(args.steps):
        loss = train_step(opt, model, clf, task.train, step, args.batch_size, args.seed, ranks)
        g = opt.diagnostics()["projected_grad"]
        rows.append({"config": name, "step": step + 1, "g": g, "loss": loss, "forwards": opt.forwards,
                     "lr": args.lr, "eps": args.eps, "seed": args.seed, "dtype": args.dtype,
                     "scale": opt.hyperparameters().get("scale", ""), "frozen_vectors": frozen,
                     "git_rev": meta["git_rev"], "timestamp": meta["timestamp"]})
    return rows


def summarize(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    gs = [abs(r["g"]) for r in rows]
    return {"mean_abs_g": statistics.fmean(gs), "rms_g": math.sqrt(statistics.fmean(g * g for g in gs)),
            "last_loss": rows[-1]["loss"]}


def report(path: Path) -> None:
    """mean |g| and RMS g per (config, seed) of the CSV, each over its steps, and their ratios
    to MeZO's (mezo-matrices' for the frozen-vector variants) at the same seed."""
    import csv  # noqa: PLC0415

    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            row["g"], row["loss"] = float(row["g"]), float(row["loss"])
            groups.setdefault((row["config"], int(row["seed"])), []).append(row)
    stats = {key: summarize(rows) for key, rows in groups.items()}
    for (name, seed), s in sorted(stats.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows = groups[(name, seed)]
        ref = stats.get(("mezo-matrices" if name.endswith("-matrices") else "mezo", seed))
        ratio = (f"  / MeZO's: mean {s['mean_abs_g'] / ref['mean_abs_g']:.2f}, RMS "
                 f"{s['rms_g'] / ref['rms_g']:.2f}") if ref else ""
        print(f"seed {seed}  {name:26s} {len(rows)} steps  lr {rows[0]['lr']}  mean|g| "
              f"{s['mean_abs_g']:6.2f}  RMS g {s['rms_g']:6.2f}{ratio}  ({rows[0]['git_rev']})")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        report(args.csv)
        return 0
    require("bench/experiments/pgap_scale.py", ("transformers",))
    torch.set_num_threads(args.threads)
    from pgap.finetune.data import load_rotten_tomatoes  # noqa: PLC0415

    task = load_rotten_tomatoes(n_train=1000, n_dev=0, n_test=0, seed=args.seed)
    meta = run_metadata()
    summaries = {}
    for name in args.configs:
        t = time.perf_counter()
        rows = run_config(name, args, task, meta)
        append_csv(args.csv, FIELDS, rows)
        summaries[name] = summarize(rows)
        print(f"{name}: {summaries[name]} ({time.perf_counter() - t:.0f} s)", flush=True)
    ref = summaries.get("mezo")
    print(f"seed {args.seed}, lr {args.lr}, eps {args.eps}, {args.steps} steps, {args.dtype}, "
          f"revision {meta['git_rev']}")
    for name, s in summaries.items():
        ratio = (f"  mean|g| / MeZO's {s['mean_abs_g'] / ref['mean_abs_g']:.2f}, RMS ratio "
                 f"{s['rms_g'] / ref['rms_g']:.2f}") if ref else ""
        print(f"  {name:16s} mean|g| {s['mean_abs_g']:.4g}  RMS g {s['rms_g']:.4g}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
