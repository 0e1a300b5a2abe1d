"""Does AGZO's activation subspace concentrate the curvature as much as the gradient? (issue 22, item 2)

A two-point ZO step with z ~ N(0, P) (P = I for MeZO, P = I ⊗ V·Vᵀ per matrix for AGZO) and
batch gradient g moves the loss, to second order, by

    E[ΔL] = -lr·gᵀP∇L + (lr²/2)·[(gᵀPg)·tr(P·H·P) + 2·gᵀP·H·P·g],

so the largest stable lr is ~ 2/tr(P·H·P), and the best progress per step is ~ ‖P·g‖²/tr(P·H·P).
Against MeZO, AGZO should then gain a factor

    (‖P·g‖² / ‖g‖²) / (tr(P·H·P) / tr(H))   -- gradient share over curvature share.

If the activation subspace holds 0.83 of the gradient's energy but also ~0.8 of the Hessian's
trace, the factor is ~1: AGZO's stable lr and progress equal MeZO's, whatever the dimension.

On the embedded SmolLM2-135M (float32) and one Rotten Tomatoes batch (split by movie, as protocol
v2), over every ``nn.Linear`` weight (AGZO's matrices; the other parameters are left out of both
sides), this measures with Hutchinson probes z ~ N(0, P) and Hessian-vector products (double
backward):

* ``full``: P = I (MeZO), tr(H);
* ``sketched``: AGZO's bases as training builds them (first basis + ``first_iters`` refinements
  from the *previous* batch, lr = 0);
* ``exact``: the top-r right singular vectors of this batch's own layer inputs (padding masked);
* ``random``: a random orthonormal r-dimensional V per matrix (control: shares ≈ r/n).

Per kind: gradient share ‖P·g‖²/‖g‖², curvature share tr(P·H·P)/tr(H) (mean ± standard error
over probes), their ratio (the predicted gain), and the predicted stable-lr ratio tr(H)/tr(P·H·P)
(both n/a unless both traces are positive: with a negative mean curvature the second-order bound
says nothing about stability).
Rows go to bench/results/agzo_curvature.csv. Example::

    python -m bench.experiments.agzo_curvature --probes 16 --batch 8
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

import pgap
from bench import common
from pgap.finetune.data import load_rotten_tomatoes, task_needs
from pgap.finetune.models import load_causal_lm, model_needs
from pgap.finetune.prompts import PromptClassifier

FIELDS = ["model", "dtype", "batch", "rank", "probes", "seed", "kind", "matrices", "dimensions",
          "gradient_share", "curvature_share", "curvature_share_se", "predicted_gain",
          "stable_lr_ratio", "trace_full", "seconds"]


def exact_bases(model: torch.nn.Module, bases, batch: Dict[str, torch.Tensor], clf,
                mask: torch.Tensor) -> List[torch.Tensor]:
    """Per basis: the top-r eigenvectors of Σ_t x_t·x_tᵀ over this batch's unpadded tokens of
    every module that uses the matrix (n × r, float32): the top right singular vectors of the
    stacked inputs X (tokens × n, float64 SVD; a batch has fewer tokens than n)."""
    rows: List[List[torch.Tensor]] = [[] for _ in bases]
    keep = mask.reshape(-1).bool()
    handles = []
    for i, b in enumerate(bases):
        def hook(module, inputs, i=i):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            if x.shape[0] == keep.numel():
                x = x[keep]
            rows[i].append(x)
        handles += [m.register_forward_pre_hook(hook) for m in b.modules]
    try:
        with torch.no_grad():
            clf.loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    out = []
    for b, xs in zip(bases, rows):
        _, _, vh = torch.linalg.svd(torch.cat(xs).double(), full_matrices=False)
        out.append(vh[:b.rank].T.float().contiguous())
    return out


def random_bases(bases, seed: int) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.linalg.qr(torch.randn(b.shape[1], b.rank, generator=gen)).Q.contiguous()
            for b in bases]


def measure(args) -> List[dict]:
    torch.manual_seed(args.seed)
    tok, model = load_causal_lm(None, torch.float32)
    model.set_attn_implementation("eager")  # the fused CPU attention has no double backward
    for prm in model.parameters():
        prm.requires_grad_(True)
    task = load_rotten_tomatoes(seed=args.seed, by_movie=True)
    clf = PromptClassifier(tok, task.template, task.label_words)
    start = args.seed * 2 * args.batch
    batch = clf.encode(task.train[start:start + args.batch])
    previous = clf.encode(task.train[start + args.batch:start + 2 * args.batch])

    t_start = time.perf_counter()

    def stage(what: str) -> None:
        print(f"  {what} ({time.perf_counter() - t_start:.0f} s)", flush=True)

    opt = pgap.AGZO(model, lr=0.0, eps=1e-3, rank=args.rank, refresh=0, seed=args.seed)
    opt.set_token_mask(previous["attention_mask"])
    for _ in range(1 + opt.first_iters):  # the first basis and its refinements, as in training
        opt.step(lambda: clf.loss(model, previous))
    bases = list(opt.bases)
    stage("sketched bases")
    sketched = [b.V.detach().clone() for b in bases]
    opt.close()
    kinds = {"sketched": sketched,
             "exact": exact_bases(model, bases, batch, clf, batch["attention_mask"]),
             "random": random_bases(bases, args.seed + 1)}
    params = [b.trainable.param for b in bases]
    stage("exact and random bases")

    model.zero_grad(set_to_none=True)
    loss = clf.loss(model, batch)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat_g = [g.detach() for g in grads]
    g_energy = sum(float((g.double() ** 2).sum()) for g in flat_g)
    stage("gradient with its graph")

    def quad(z: List[torch.Tensor]) -> float:
        hz = torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=True)
        return sum(float((a.double() * b.double()).sum()) for a, b in zip(z, hz))

    gen = torch.Generator().manual_seed(args.seed + 2)
    samples: Dict[str, List[float]] = {k: [] for k in ["full", *kinds]}
    t0 = time.perf_counter()
    for probe in range(args.probes):
        samples["full"].append(quad([torch.randn(p.shape, generator=gen) for p in params]))
        for kind, vs in kinds.items():
            samples[kind].append(quad([torch.randn(p.shape[0], v.shape[1], generator=gen) @ v.T
                                       for p, v in zip(params, vs)]))
        print(f"  probe {probe + 1}/{args.probes}: "
              + ", ".join(f"{k} {statistics.fmean(s):.4g}" for k, s in samples.items())
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = round(time.perf_counter() - t0, 1)

    trace_full = statistics.fmean(samples["full"])
    se_full = statistics.stdev(samples["full"]) / math.sqrt(args.probes) if args.probes > 1 else float("nan")
    dims_full = sum(p.numel() for p in params)
    rows = [dict(kind="full", dimensions=dims_full, gradient_share=1.0, curvature_share=1.0,
                 curvature_share_se=round(se_full / abs(trace_full), 4), predicted_gain=1.0,
                 stable_lr_ratio=1.0)]
    for kind, vs in kinds.items():
        share_g = sum(float(((g.double() @ v.double()) ** 2).sum()) for g, v in zip(flat_g, vs)) / g_energy
        tr = statistics.fmean(samples[kind])
        se = statistics.stdev(samples[kind]) / math.sqrt(args.probes) if args.probes > 1 else float("nan")
        share_h = tr / trace_full
        # the second-order picture (stable lr ~ 2/tr(PHP)) needs positive curvature on both sides
        convex = tr > 0 and trace_full > 0
        # standard error of the ratio (independent probes): delta method
        se_ratio = abs(share_h) * math.sqrt((se / tr) ** 2 + (se_full / trace_full) ** 2)
        rows.append(dict(kind=kind, dimensions=sum(p.shape[0] * v.shape[1] for p, v in zip(params, vs)),
                         gradient_share=round(share_g, 4), curvature_share=round(share_h, 4),
                         curvature_share_se=round(se_ratio, 4),
                         predicted_gain=round(share_g / share_h, 3) if convex else float("nan"),
                         stable_lr_ratio=round(1 / share_h, 3) if convex else float("nan")))
    for r in rows:
        r.update(model="smollm2-135m", dtype="float32", batch=args.batch, rank=args.rank,
                 probes=args.probes, seed=args.seed, matrices=len(params), trace_full=round(trace_full, 4),
                 seconds=seconds)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probes", type=int, default=16, help="Hutchinson probes per kind")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one measurement per seed "
                   "(each its own batches, bases and probes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "agzo_curvature.csv")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    common.require("bench/experiments/agzo_curvature.py", ("transformers",),
                   needs=model_needs(None) + task_needs("rotten_tomatoes"))
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = common.run_metadata()
    print(f"rev {meta['git_rev']} | SmolLM2-135M float32, batch {args.batch}, rank {args.rank}, "
          f"{args.probes} probes per kind")
    print(f"{'kind':<9} {'dims':>11} {'grad share':>10} {'curv share':>16} {'gain':>6} {'lr ratio':>8}")
    for seed in args.seed:
        rows = measure(argparse.Namespace(**{**vars(args), "seed": seed}))
        for r in rows:
            print(f"{r['kind']:<9} {r['dimensions']:>11} {r['gradient_share']:>10} "
                  f"{r['curvature_share']:>8} ± {r['curvature_share_se']:<6} {r['predicted_gain']:>6} "
                  f"{r['stable_lr_ratio']:>8}   (seed {seed})")
        if not args.no_csv:
            common.append_csv(args.csv, list(meta) + FIELDS, [{**meta, **r} for r in rows])
    if not args.no_csv:
        print(f"CSV rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
