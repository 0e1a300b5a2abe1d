"""Do paired forwards estimate the same gradient? (pgap.paired; issue 23, this stop)

On the embedded SmolLM2-135M and pgap-finetune's training batches (Rotten Tomatoes, batch 8,
``--seed``'s batches and optimizer seed), three copies of the model with the same optimizer
(``--method``, functional mode, lr 0 so that every copy stays at the initial weights): one
stepping unpaired, one paired with mirrored − copies (``pair_copies="mirror"``, the default),
one paired with drawn − copies ("draw"). At each step all three draw the same z (same seed and
step), so their projected gradients g = (L+ − L−)/(2ε) differ only by how the two points were
computed: one forward at 2B rows against two at B rows (matrix products blocked differently),
and for "mirror" the − copy's rounding. Prints, per paired variant, the correlation of g with
the unpaired g over the steps and the RMS of the difference relative to the RMS of g; rows (one
per step) go to bench/results/paired_agreement.csv.

    python -m bench.experiments.paired_agreement --steps 30 --method mezo --threads 1
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from pathlib import Path
from typing import Dict, List

import torch

from bench.common import RESULTS_DIR, append_csv, require, run_metadata

VARIANTS = ("unpaired", "mirror", "draw")
FIELDS = ["method", "step", "dtype", "seed", "eps", *(f"g_{v}" for v in VARIANTS), "git_rev", "timestamp"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="mezo", choices=["mezo", "agzo"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--distribution", choices=["gaussian", "rademacher"], default="gaussian",
                   help="MeZO's directions (the recorded rows are Gaussian; pgap-finetune's MeZO "
                        "takes Rademacher ones by default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", type=Path, default=RESULTS_DIR / "paired_agreement.csv")
    return p.parse_args(argv)


def agreement(reference: List[float], other: List[float]) -> Dict[str, float]:
    """Correlation of ``other`` with ``reference`` and RMS(other − reference) / RMS(reference)."""
    rms = math.sqrt(statistics.fmean(g * g for g in reference))
    diff = math.sqrt(statistics.fmean((a - b) ** 2 for a, b in zip(other, reference)))
    return {"correlation": statistics.correlation(reference, other), "relative_rms_difference": diff / rms}


def main(argv=None) -> int:
    args = parse_args(argv)
    require("bench/experiments/paired_agreement.py", ("transformers",))
    torch.set_num_threads(args.threads)
    from pgap.dtypes import DTYPES  # noqa: PLC0415
    from pgap.finetune.cli import DEFAULTS  # noqa: PLC0415
    from pgap.finetune.data import load_rotten_tomatoes  # noqa: PLC0415
    from pgap.finetune.models import load_causal_lm  # noqa: PLC0415
    from pgap.finetune.prompts import PromptClassifier  # noqa: PLC0415
    from pgap.finetune.train import Ranks, train_step  # noqa: PLC0415
    from pgap.methods import build_optimizer  # noqa: PLC0415

    tokenizer, model = load_causal_lm(None, DTYPES[args.dtype])
    for p in model.parameters():
        p.requires_grad_(True)
    task = load_rotten_tomatoes(n_train=1000, n_dev=0, n_test=0, seed=args.seed)
    clf = PromptClassifier(tokenizer, task.template, task.label_words)
    options = {k: v for k, v in DEFAULTS[args.method].items() if k != "lr"}
    if args.method == "mezo":
        options["distribution"] = args.distribution
    # AGZO has no pair_copies: its side terms are exact for either sign and its views follow
    # "auto" (mirror float32, draw bf16), so it has one paired variant, named for what "auto" does
    variants = VARIANTS if args.method == "mezo" else ("unpaired", "mirror" if args.dtype == "fp32" else "draw")
    models = {v: copy.deepcopy(model) for v in variants}
    opts = {v: build_optimizer(args.method, models[v], lr=0.0, eps=args.eps, seed=args.seed,
                               **dict(options, mode="functional")) for v in variants}
    if args.method == "mezo":
        opts["mirror"].pair_copies, opts["draw"].pair_copies = "mirror", "draw"
    meta = run_metadata()
    gs: Dict[str, List[float]] = {v: [] for v in opts}
    ranks = Ranks()
    for step in range(args.steps):
        for v, opt in opts.items():
            train_step(opt, models[v], clf, task.train, step, args.batch_size, args.seed, ranks,
                       paired=v != "unpaired")
            gs[v].append(opt.diagnostics()["projected_grad"])
        row = {"method": args.method, "step": step + 1, "dtype": args.dtype, "seed": args.seed,
               "eps": args.eps, **{f"g_{v}": gs[v][-1] if v in gs else "" for v in VARIANTS},
               "git_rev": meta["git_rev"], "timestamp": meta["timestamp"]}
        append_csv(args.csv, FIELDS, [row])
        print(f"step {step + 1}: " + "  ".join(f"g_{v} {gs[v][-1]:+.4f}" for v in gs), flush=True)
    for v in gs:
        if v != "unpaired":
            a = agreement(gs["unpaired"], gs[v])
            print(f"{args.method} {args.dtype} paired ({v}) against unpaired over {args.steps} steps: "
                  f"correlation {a['correlation']:.4f}, RMS difference / RMS g "
                  f"{a['relative_rms_difference']:.4f} (revision {meta['git_rev']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
