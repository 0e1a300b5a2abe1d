"""How much of the true gradient P-GAP's subspace holds on the real model.

On the embedded SmolLM2-135M-Instruct and one Rotten Tomatoes batch (MeZO's prompt protocol), for
each setting: one P-GAP window start (h two-sided probes + randomized SVD, ``lr=0`` so the
weights stay put), then ``opt.gradient_alignment`` against the backprop gradient on the same
batch. Per matrix W (m×n) with gradient G:

* ``captured`` = ‖Uᵀ·G·V‖ / ‖G‖, the share of the gradient's norm inside span(U)×span(V); a
  random r-dimensional pair of subspaces holds about r/√(m·n) of it;
* ``cosine`` = cos(U·S_r·Vᵀ, G), the window's gradient estimate against the gradient.

``--subspaces activation`` measures AGZO's one-sided activation subspace instead: the basis V
(n×r) is sketched by ``pgap.AGZO`` from the layer inputs of the *next* batch (padding masked;
its first basis and ``first_iters`` refinements, as in training, at lr = 0),
and ``captured`` = ‖G·V‖ / ‖G‖ for the gradient of this batch; a random r-dimensional subspace
holds about √(r/n). Only ``nn.Linear`` weights (the tied lm_head included) have such a basis.

Prints the median, 10th and 90th percentile over the 211 matrices and writes
bench/results/alignment.csv. Needs the embedded model (``make demo`` installs it).

Example::

    python -m bench.experiments.alignment --probes 10 50 --batch 16
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import common

import pgap
from pgap.finetune.data import load_rotten_tomatoes, task_needs
from pgap.finetune.models import load_causal_lm, model_needs
from pgap.finetune.prompts import PromptClassifier

FIELDS = ["model", "subspace", "probes", "rank", "batch", "matrices", "captured_median",
          "captured_p10", "captured_p90", "cosine_median", "cosine_p10", "cosine_p90",
          "random_expectation_median", "seconds"]


def quantiles(values, qs=(0.1, 0.5, 0.9)):
    ordered = sorted(v for v in values if math.isfinite(v))
    return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in qs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probes", type=int, nargs="+", default=[10, 50])
    p.add_argument("--subspaces", nargs="+", default=["probe", "random", "activation"],
                   choices=["probe", "random", "activation"])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-token-mask", action="store_true",
                   help="activation rows: let padded tokens into the bases (to measure the mask)")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "alignment.csv")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    common.require("bench/experiments/alignment.py", ("transformers",),
                   needs=model_needs(None) + task_needs("rotten_tomatoes"))
    meta = common.run_metadata()
    tok, model = load_causal_lm(None)
    for prm in model.parameters():
        prm.requires_grad_(True)
    task = load_rotten_tomatoes(seed=args.seed)
    clf = PromptClassifier(tok, task.template, task.label_words)
    batch = clf.encode(task.train[:args.batch])
    other = clf.encode(task.train[args.batch:2 * args.batch])  # the activation bases' batch

    def closure():
        return clf.loss(model, batch)

    rows = []
    print(f"rev {meta['git_rev']} | SmolLM2-135M, batch {args.batch}, rank {args.rank}")
    print(f"{'subspace':<8} {'probes':>6} {'captured p10/med/p90':>24} {'cosine p10/med/p90':>24} "
          f"{'random r/sqrt(mn)':>18} {'s':>6}")
    for subspace in args.subspaces:
        if subspace == "activation":
            t0 = time.perf_counter()
            opt = pgap.AGZO(model, lr=0.0, eps=args.eps, rank=args.rank, refresh=0, seed=args.seed)
            opt.set_token_mask(None if args.no_token_mask else other["attention_mask"])
            for _ in range(1 + opt.first_iters):  # the first basis and its refinements
                opt.step(lambda: clf.loss(model, other))
            res = opt.gradient_alignment(closure)
            opt.close()
            seconds = time.perf_counter() - t0
            cap = quantiles(res["captured"].values())
            rand = statistics.median(math.sqrt(b.rank / b.shape[1]) for b in opt.bases)
            rows.append(dict(model="smollm2-135m", probes=0, rank=args.rank,
                             subspace=subspace + ("-unmasked" if args.no_token_mask else ""),
                             batch=args.batch, matrices=len(res["captured"]),
                             captured_median=cap[1], captured_p10=cap[0], captured_p90=cap[2],
                             cosine_median="", cosine_p10="", cosine_p90="",
                             random_expectation_median=rand, seconds=round(seconds, 1)))
            head = {k: round(v, 4) for k, v in res["captured"].items() if "embed" in k or "lm_head" in k}
            print(f"{rows[-1]['subspace']:<8} {0:>6} {cap[0]:>8.4f}/{cap[1]:.4f}/{cap[2]:.4f} {'-':>24} "
                  f"{rand:>18.4f} {seconds:>6.0f}   lm_head (tied) {head}")
            continue
        for h in args.probes:
            t0 = time.perf_counter()
            opt = pgap.PGAP(model, lr=0.0, eps=args.eps, rank=args.rank, window=1000, probes=h,
                            subspace=subspace, seed=args.seed)
            opt.step(closure)
            res = opt.gradient_alignment(closure)
            opt.close()
            seconds = time.perf_counter() - t0
            cap = quantiles(res["captured"].values())
            cos = quantiles(res["subspace_cosine"].values())
            rand = statistics.median(s.rank / math.sqrt(s.shape[0] * s.shape[1]) for s in opt.matrices)
            rows.append(dict(model="smollm2-135m", subspace=subspace, probes=h, rank=args.rank,
                             batch=args.batch, matrices=len(res["captured"]),
                             captured_median=cap[1], captured_p10=cap[0], captured_p90=cap[2],
                             cosine_median=cos[1], cosine_p10=cos[0], cosine_p90=cos[2],
                             random_expectation_median=rand, seconds=round(seconds, 1)))
            print(f"{subspace:<8} {h:>6} {cap[0]:>8.4f}/{cap[1]:.4f}/{cap[2]:.4f} "
                  f"{cos[0]:>8.4f}/{cos[1]:.4f}/{cos[2]:.4f} {rand:>18.4f} {seconds:>6.0f}")
    if not args.no_csv:
        common.append_csv(args.csv, list(meta) + FIELDS, [{**meta, **r} for r in rows])
        print(f"CSV rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
