"""Why does AGZO's fixed-batch advantage over MeZO vanish on the real task? One factor at a time
(issue 22, item 2; docs/agzo.md "Diagnosis").

On one fixed batch, AGZO (perturbations in the span of each layer's inputs) stayed stable at 3x
MeZO's lr; on the real task both are stable only up to 3e-5. Each run here trains the embedded
SmolLM2-135M on Rotten Tomatoes (split by movie, as protocol v2) for ``--steps`` steps of batch 8
from the same initial weights and seed, and measures the dev cross-entropy on ``--eval``
sentences (a seeded sample of protocol v2's dev split) every ``--every`` steps, with the RMS of
the projected gradient g over the last ``--every`` steps and the distance ‖θ − θ0‖₂ travelled
(a random walk along the directions z grows it by ~lr·|g|·‖z‖ per step). A spec ``method[:factor]@lr`` changes one thing:

* ``mezo``, ``agzo``: the defaults (AGZO: sketched bases, refreshed every 10 steps, the
  non-matrix parameters ("others") perturbed with MeZO's Gaussians);
* ``:fixed``: every step trains on the same batch (step 0's), the fixed-batch setting;
* ``:perbatch``: AGZO's bases re-fitted to each step's own batch before it perturbs (one extra
  captured forward per step, counted: an orthogonal-iteration step warm-started from the last
  bases);
* ``:frozen``: AGZO with ``others="frozen"`` (only the ``nn.Linear`` weights train);
* ``:refresh1``: AGZO's bases refreshed every step from its +eps forward (no extra forward);
* ``:fp32``: the run in float32 instead of bfloat16.

A run is "diverged" when a loss is not finite or the dev loss exceeds twice its start (on a fixed
batch, where the dev loss also rises by overfitting: when the batch's training loss, averaged
over the last ``--every`` steps, exceeds twice its average over the first ``--every`` steps). Rows (one
per run and evaluation) are appended to ``--csv`` as they happen; a run whose last row is there
is skipped, so the script resumes. Example::

    python -m bench.experiments.agzo_factors --threads 1 agzo@3e-4 agzo:fixed@3e-4 mezo@3e-4
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

import pgap
from bench import common
from pgap import NonFiniteLossError
from pgap.finetune.data import load_rotten_tomatoes, task_needs
from pgap.finetune.models import load_causal_lm, model_needs
from pgap.finetune.prompts import PromptClassifier
from pgap.finetune.train import Ranks, evaluate, train_step

FACTORS = ("fixed", "perbatch", "frozen", "refresh1", "fp32")
FIELDS = ["spec", "method", "factor", "lr", "dtype", "seed", "steps_total", "step", "forwards",
          "status", "train_loss", "dev_loss", "dev_accuracy", "seconds", "git_rev", "g_rms", "drift"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class PerBatchBasisAGZO(pgap.AGZO):
    """AGZO whose bases are re-fitted to each step's own batch: ``basis_iters`` captured,
    unperturbed forwards (orthogonal-iteration steps warm-started from the last bases) before the
    step perturbs (a diagnostic: the extra forwards are counted in ``forwards``)."""

    def __init__(self, model, *, basis_iters: int = 1, **kwargs) -> None:
        super().__init__(model, refresh=0, first_iters=0, **kwargs)
        self.basis_iters = basis_iters

    def _step(self, closure):
        for _ in range(self.basis_iters):
            with self._capturing(True):
                self.evaluate_finite(closure, "of the basis forward")
            with self.committing():
                self._finish_refresh()
        return super()._step(closure)


def parse_spec(spec: str) -> Tuple[str, str, float]:
    """``method[:factor]@lr`` -> (method, factor or "", lr)."""
    head, _, lr = spec.partition("@")
    method, _, factor = head.partition(":")
    if method not in ("mezo", "agzo") or not lr:
        raise ValueError(f"spec {spec!r}: expected mezo|agzo[:factor]@lr")
    if factor and factor not in FACTORS:
        raise ValueError(f"spec {spec!r}: factor must be one of {FACTORS}")
    if factor in ("perbatch", "frozen", "refresh1") and method != "agzo":
        raise ValueError(f"spec {spec!r}: factor {factor!r} is AGZO's")
    return method, factor, float(lr)


def build(method: str, factor: str, model, lr: float, seed: int):
    if method == "mezo":
        return pgap.MeZO(model, lr=lr, eps=1e-3, seed=seed)
    if factor == "perbatch":
        return PerBatchBasisAGZO(model, lr=lr, eps=1e-3, seed=seed)
    options = {"frozen": dict(others="frozen"), "refresh1": dict(refresh=1)}.get(factor, {})
    return pgap.AGZO(model, lr=lr, eps=1e-3, seed=seed, **options)


def diverged(factor: str, first: Sequence[float], window: Sequence[float], start_dev: float,
             dev_loss: float) -> bool:
    """The dev loss beyond twice its start; on a fixed batch, where the dev loss also rises by
    overfitting, the batch's own training loss (the last window's mean) beyond twice the first
    window's mean instead."""
    if factor == "fixed":
        return not statistics.fmean(window) <= 2 * statistics.fmean(first)
    return not dev_loss <= 2 * start_dev


def rms(values: Sequence[float]) -> float:
    return (sum(v * v for v in values) / len(values)) ** 0.5 if values else float("nan")


def distance(model, initial: Dict[str, torch.Tensor]) -> float:
    """‖θ − θ0‖₂ over every parameter (float32 accumulation)."""
    with torch.no_grad():
        return sum(float((p.float() - initial[n].float()).square().sum())
                   for n, p in model.named_parameters()) ** 0.5


def done_specs(rows: Sequence[dict], steps: int, seed: int) -> set:
    """Specs with a final row (the last evaluation, or a divergence) for this budget and seed."""
    return {r["spec"] for r in rows if int(r["steps_total"]) == steps and int(r["seed"]) == seed
            and (int(r["step"]) == steps or r["status"] != "ok")}


def run_spec(spec: str, args, loaded: Dict[str, tuple], task, rev: str) -> None:
    method, factor, lr = parse_spec(spec)
    dtype = "fp32" if factor == "fp32" else args.dtype
    if dtype not in loaded:
        tok, model = load_causal_lm(None, DTYPES[dtype])
        for p in model.parameters():
            p.requires_grad_(True)
        loaded[dtype] = (tok, model, {n: p.detach().clone() for n, p in model.named_parameters()})
    tok, model, initial = loaded[dtype]
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(initial[n])
    clf = PromptClassifier(tok, task.template, task.label_words)
    dev = random.Random(1).sample(list(task.dev), min(args.eval, len(task.dev)))  # both labels
    ranks = Ranks()
    opt = build(method, factor, model, lr, args.seed)
    base = dict(spec=spec, method=method, factor=factor, lr=lr, dtype=dtype, seed=args.seed,
                steps_total=args.steps, git_rev=rev)
    start_loss = evaluate(clf, model, dev, ranks)[1]
    losses: List[float] = []
    grads: List[float] = []  # the projected gradient g of every step
    t0, status = time.perf_counter(), "ok"
    with contextlib.ExitStack() as stack:
        stack.callback(opt.close)
        for step in range(1, args.steps + 1):
            try:
                losses.append(train_step(opt, model, clf, task.train, 0 if factor == "fixed" else step - 1,
                                         args.batch, args.seed, ranks))
            except NonFiniteLossError:
                status = "diverged"
            else:
                grads.append(float(opt.diagnostics().get("projected_grad", float("nan"))))
            if status == "ok" and step % args.every and step != args.steps:
                continue
            acc, dev_loss = evaluate(clf, model, dev, ranks) if status == "ok" else (float("nan"),) * 2
            window = losses[-args.every:]
            if status == "ok" and diverged(factor, losses[:args.every], window, start_loss, dev_loss):
                status = "diverged"
            row = dict(base, step=step, forwards=opt.forwards, status=status,
                       train_loss=round(statistics.fmean(window), 5) if window else "",
                       dev_loss=round(dev_loss, 5), dev_accuracy=round(acc, 4),
                       seconds=round(time.perf_counter() - t0, 1),
                       g_rms=round(rms(grads[-args.every:]), 4), drift=round(distance(model, initial), 4))
            common.append_csv(args.csv, FIELDS, [row])
            print(f"  {spec:<22} step {step:>4} ({row['forwards']:>4} fwd): train {row['train_loss']}  "
                  f"dev loss {row['dev_loss']} (start {start_loss:.4f})  acc {row['dev_accuracy']}  "
                  f"{status}  {row['seconds']:.0f} s", flush=True)
            if status != "ok":
                break


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", help="method[:factor]@lr, e.g. agzo:fixed@3e-4")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25, help="evaluate every this many steps")
    ap.add_argument("--eval", type=int, default=128, help="dev sentences (a seeded sample) for the dev loss")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--csv", type=Path, default=Path("bench/results/agzo_factors.csv"))
    args = ap.parse_args(argv)
    for spec in args.specs:
        parse_spec(spec)
    done = done_specs(common.read_csv_rows(args.csv), args.steps, args.seed)
    todo = [s for s in args.specs if s not in done]
    if not todo:
        print("agzo_factors: every spec is in the CSV")
        return 0
    common.require("agzo_factors", ("transformers",), needs=model_needs(None) + task_needs("rotten_tomatoes"))
    if args.threads:
        torch.set_num_threads(args.threads)
    task = load_rotten_tomatoes(n_train=1000, n_dev=500, n_test=2000, seed=0, by_movie=True)  # protocol v2
    rev = common.git_revision()
    loaded: Dict[str, tuple] = {}
    for spec in todo:
        run_spec(spec, args, loaded, task, rev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
