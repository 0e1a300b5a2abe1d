"""Paired forwards against the unpaired step, interleaved (pgap.paired; issue 23, item 5).

On ``step_cost``'s task (embedded SmolLM2-135M, one batch of Rotten Tomatoes prompts,
``PromptClassifier.loss``), for each ``--methods`` (functional mode, pgap-finetune's defaults):
four copies of the model, one plain (no hooks), one with the optimizer stepping unpaired
(``opt.step(loss)``) and one with the same optimizer stepping paired
(``opt.step(loss, pair_closure=PromptClassifier.pair_loss)``); and a fourth stepping in place
(``mode="inplace"``, unpaired: the mode pgap-finetune ran before it paired AGZO and P-GAP under
bf16-mixed). Each round times a plain forward, an unpaired step, a paired step and an in-place
step, one after another (``bench.common.time_ms``), so a loaded machine's drift hits all four
alike; the rows give medians and the ratios step / forward, paired / unpaired and paired / in
place. ``--threads 1`` (default) times the thread's CPU time. Target lines: bf16 MeZO ≤ 2.4
forwards and AGZO ≤ 2.3 (issue 23), paired. Rows go to bench/results/paired_steps.csv.

Example::

    python -m bench.steps.paired --methods mezo-rademacher agzo --repeats 9
    python -m bench.steps.paired --dtypes bf16-mixed --methods agzo pgap --repeats 9
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import List

import torch

from bench import common
from bench.steps.step_cost import CLOCK, load_classifier, options

from pgap.finetune.data import task_needs
from pgap.finetune.models import model_needs
from pgap.methods import build_optimizer

METHODS = {"mezo-gaussian": ("mezo", {"distribution": "gaussian"}),
           "mezo-rademacher": ("mezo", {"distribution": "rademacher"}),
           "agzo": ("agzo", {}), "pgap": ("pgap", {}), "subzero": ("subzero", {}), "mezo-gv": ("mezo-gv", {}),
           "ldsd": ("ldsd", {})}
TARGETS = {("mezo-gaussian", "bf16"): 2.4, ("mezo-rademacher", "bf16"): 2.4, ("agzo", "bf16"): 2.3}
FIELDS = ["model", "dtype", "batch", "method", "pair_copies", "warmup", "repeats", "forward_ms", "unpaired_ms",
          "paired_ms", "unpaired_in_forwards", "paired_in_forwards", "paired_over_unpaired", "inplace_ms",
          "inplace_in_forwards", "paired_over_inplace"]
DEFAULT_CSV = common.RESULTS_DIR / "paired_steps_v2.csv"  # paired_steps.csv: rows before the in-place column


def measure(dtype: str, method: str, args) -> dict:
    model, clf, batch = load_classifier(dtype, args.batch)
    base_method, extra = METHODS[method]
    opts = dict(options(base_method), **extra, mode="functional")
    unpaired, paired, inplace = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    opt_u = build_optimizer(base_method, unpaired, lr=1e-9, eps=1e-3, seed=0, **opts)
    opt_p = build_optimizer(base_method, paired, lr=1e-9, eps=1e-3, seed=0, **opts)
    opt_i = build_optimizer(base_method, inplace, lr=1e-9, eps=1e-3, seed=0, **dict(opts, mode="inplace"))
    if hasattr(opt_p, "pair_copies"):  # the MeZO family (AGZO's side terms are exact either way)
        opt_p.pair_copies = args.pair_copies
    for opt in (opt_u, opt_p, opt_i):
        opt.set_token_mask(batch["attention_mask"])

    def forward():
        with torch.no_grad():
            clf.loss(model, batch)

    def step_unpaired():
        opt_u.step(lambda: clf.loss(unpaired, batch))

    def step_paired():
        opt_p.step(lambda: clf.loss(paired, batch), pair_closure=lambda: clf.pair_loss(paired, batch))

    def step_inplace():
        opt_i.step(lambda: clf.loss(inplace, batch))

    times = common.time_ms({"forward": forward, "unpaired": step_unpaired, "paired": step_paired,
                            "inplace": step_inplace},
                           torch.device("cpu"), args.warmup, args.repeats, CLOCK[args.clock])
    med = {k: common.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> float:  # the median over rounds of a's time / b's
        return common.median([x / y for x, y in zip(times[a], times[b])])

    row = dict(model="smollm2-135m (embedded)", dtype=dtype, batch=args.batch, method=method,
               pair_copies=getattr(opt_p, "pair_copies", ""), warmup=args.warmup, repeats=args.repeats, forward_ms=med["forward"],
               unpaired_ms=med["unpaired"], paired_ms=med["paired"],
               unpaired_in_forwards=ratio("unpaired", "forward"), paired_in_forwards=ratio("paired", "forward"),
               paired_over_unpaired=ratio("paired", "unpaired"), inplace_ms=med["inplace"],
               inplace_in_forwards=ratio("inplace", "forward"), paired_over_inplace=ratio("paired", "inplace"))
    print(f"  {dtype} {method:16s} ({row['pair_copies'] or 'side path'}) forward {med['forward']:7.1f} ms  unpaired {row['unpaired_in_forwards']:.2f}"
          f"  paired {row['paired_in_forwards']:.2f}  in place {row['inplace_in_forwards']:.2f} forwards  "
          f"(paired/unpaired {row['paired_over_unpaired']:.3f}, paired/in place {row['paired_over_inplace']:.3f})",
          flush=True)
    for opt in (opt_u, opt_p, opt_i):
        opt.close()
    return row


def target_lines(rows: List[dict]) -> List[str]:
    lines = []
    for r in rows:
        limit = TARGETS.get((r["method"], r["dtype"]))
        if limit is not None:
            ok = r["paired_in_forwards"] <= limit
            lines.append(f"{'PASS' if ok else 'FAIL'}: [{r['dtype']}] {r['method']} paired step = "
                         f"{r['paired_in_forwards']:.2f} forwards (unpaired {r['unpaired_in_forwards']:.2f}; "
                         f"target <= {limit})")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["bf16"], choices=["fp32", "bf16", "bf16-mixed"])
    p.add_argument("--methods", nargs="+", default=["mezo-gaussian", "mezo-rademacher", "agzo"], choices=list(METHODS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pair-copies", default="auto", choices=["auto", "draw", "mirror"],
                   help="how the MeZO family's paired step makes its minus copies")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="cpu", choices=sorted(CLOCK))
    p.add_argument("--device", default="cpu", choices=["cpu"])
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("paired: --clock cpu needs --threads 1 (other threads' work is not counted)")
    common.require("bench/steps/paired.py", ("transformers",), plot=False,
                   needs=model_needs(None) + task_needs("rotten_tomatoes"))
    _, meta = common.start_timing_run(args)
    rows = [measure(dtype, method, args) for dtype in args.dtypes for method in args.methods]
    common.print_targets(target_lines(rows))
    common.write_rows(args, meta, FIELDS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
