"""Where AGZO's functional step spends the time beyond its two forwards (issue 23, item 5).

On ``step_cost``'s task (embedded SmolLM2-135M, one batch of Rotten Tomatoes prompts, AGZO at
pgap-finetune's defaults, ``mode="functional"``), after ``--warmup`` steps (past the first
basis and its refinements), pending updates merged, in one process and interleaved per repeat:

* forwards with the optimizer's hooks: idle (sketch pre-hooks only), the vectors' perturbed
  views shown (norm weights), the side path active (``coeff = eps``), both (a step's forward);
* one step (timed; its update is merged afterwards, untimed);
* the side path's operations, each summed over every side-path module's call in one forward,
  timed in place (hooks of ours doing the side path's arithmetic op by op; the loss is checked
  to equal the optimizer's own side path's): the cast to the side path's dtype (x → float32
  for float32 arithmetic; M → bf16 for bf16 outputs, whose side path runs in bf16 with its bases
  cast once per refresh), x·B (the n × r GEMM), M = A + c·Ξ, s·Mᵀ (the r-deep GEMM), the cast
  to the output dtype, the add to the output, and the tied embedding's gather + GEMM.

All in units of the idle forward (median of ``--repeats``). ``--threads 1`` (default) times CPU
time of the calling thread (``time.thread_time``), which a loaded machine disturbs least; more
threads time wall clock. Prints a table; rows go to bench/results/agzo_breakdown.csv.

Example::

    python -m bench.steps.agzo_breakdown --dtype bf16 --repeats 9
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

from bench import common
from bench.steps.step_cost import load_task, options

from pgap.finetune.data import task_needs
from pgap.finetune.models import model_needs
from pgap.methods import build_optimizer

FIELDS = ["dtype", "batch", "threads", "repeats", "part", "ms", "in_forwards"]
FORWARDS = ("idle", "views", "side", "views+side")


def side_parts(opt, loss, clock: Callable[[], float]) -> Dict[str, float]:
    """Seconds of each operation of the side path (at coeff = eps) in one forward of ``loss``,
    timed in place: the optimizer's side path stays inactive and hooks of ours do its work on
    every side-path module, op by op. Raises if that forward's loss differs from the one through
    the optimizer's own side path (the timed copy must do the same arithmetic)."""
    spent = dict.fromkeys(("to the side dtype", "x·B", "M = A + c·Ξ", "s·Mᵀ", "cast to output dtype",
                           "add to output", "embedding gather + GEMM"), 0.0)
    eps = opt.eps

    def timed(part, fn, *a):
        t = clock()
        out = fn(*a)
        spent[part] += clock() - t
        return out

    def hook(module, inputs, output, s):
        M = timed("M = A + c·Ξ", lambda: s.A + eps * s.Z)
        x, V = inputs[0], s.V
        if output.dtype == torch.bfloat16:  # the side path's bf16 arithmetic (pgap.side_paths)
            M, V = timed("to the side dtype", M.to, torch.bfloat16), opt.side._low(s.V)
        elif not isinstance(module, nn.Embedding):
            x = timed("to the side dtype", x.to, torch.float32)
        if isinstance(module, nn.Embedding):
            side = timed("embedding gather + GEMM", lambda: M[x] @ V.T)
        else:
            side = timed("s·Mᵀ", torch.matmul, timed("x·B", torch.matmul, x, V), M.T)
        return timed("add to output", output.add_, timed("cast to output dtype", side.to, output.dtype))

    handles = [m.register_forward_hook(lambda mod, inp, out, s=s: hook(mod, inp, out, s))
               for s in opt.side.states for m in s.modules]
    try:
        with torch.no_grad():
            timed_loss = loss()
    finally:
        for h in handles:
            h.remove()
    opt.side.coeff = eps
    try:
        with torch.no_grad():
            real_loss = loss()
    finally:
        opt.side.coeff = 0.0
    if not torch.equal(timed_loss, real_loss):
        raise RuntimeError(f"the timed side path gives loss {float(timed_loss)}, the optimizer's "
                           f"{float(real_loss)}: update this bench to the side path's arithmetic")
    return spent


def measure(args) -> List[dict]:
    model, batch, loss = load_task(args.dtype, args.batch)
    opt = build_optimizer("agzo", model, lr=1e-9, eps=1e-3, seed=0, mode="functional", **options("agzo"))
    opt.set_token_mask(batch["attention_mask"])
    for _ in range(args.warmup):
        opt.step(loss)
    opt.merge()
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    eps, vectors = opt.eps, opt._perturbed_vectors()

    def forward(views: bool, side: bool) -> float:
        if views:
            opt.views.move(vectors, [opt.step_seed()], [eps])
        opt.side.coeff = eps if side else 0.0
        t = clock()
        with torch.no_grad():
            loss()
        t = clock() - t
        opt.views.hide()
        opt.side.coeff = 0.0
        return t

    times: Dict[str, List[float]] = {k: [] for k in FORWARDS + ("step",)}
    parts: Dict[str, List[float]] = {}
    steps_refreshing = []
    for _ in range(args.repeats):
        for name in FORWARDS:
            times[name].append(forward("views" in name, "side" in name))
        steps_refreshing.append(opt._refresh_due())
        t = clock()
        opt.step(loss)
        times["step"].append(clock() - t)
        opt.merge()
        for part, spent in side_parts(opt, loss, clock).items():
            parts.setdefault(part, []).append(spent)
    opt.close()
    fwd = statistics.median(times["idle"])
    plain_steps = [t for t, r in zip(times["step"], steps_refreshing) if not r] or times["step"]
    rows = [dict(part=f"forward, hooks {k}", ms=statistics.median(v) * 1e3) for k, v in times.items() if k != "step"]
    rows.append(dict(part="step (no refresh)", ms=statistics.median(plain_steps) * 1e3))
    rows += [dict(part=f"side path per forward: {k}", ms=statistics.median(v) * 1e3) for k, v in parts.items()]
    rows.append(dict(part="side path per forward: sum of the parts",
                     ms=sum(statistics.median(v) for v in parts.values()) * 1e3))
    base = dict(dtype=args.dtype, batch=args.batch, threads=args.threads, repeats=args.repeats)
    return [dict(base, **r, in_forwards=r["ms"] / (fwd * 1e3)) for r in rows]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu"])
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "agzo_breakdown.csv")
    p.add_argument("--no-csv", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.require("bench/steps/agzo_breakdown.py", ("transformers",),
                   needs=model_needs(None) + task_needs("rotten_tomatoes"))
    _, meta = common.start_timing_run(args)
    rows = measure(args)
    print(f"\n{'part':<52}{'ms':>9}{'forwards':>10}")
    for r in rows:
        print(f"{r['part']:<52}{r['ms']:>9.1f}{r['in_forwards']:>10.3f}")
    common.write_rows(args, meta, FIELDS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
