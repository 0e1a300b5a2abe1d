"""ZO methods on the real task at equal forward budgets: the embedded SmolLM2-135M on Rotten
Tomatoes (MeZO's prompt protocol), every forward counted (the two-point pair, probes, basis
forwards).

Each run (method, lr, seed) starts from the same pretrained weights, draws its batches from the
same seeded order, and evaluates test accuracy whenever the next step would take it past one of
``--checkpoints`` forwards (default 200, 400, 600; the last is the budget), plus dev accuracy at
the budget. Rows are appended to the CSV as each evaluation finishes, so a long grid can be
stopped and continued (``--skip-done``). ``--report`` reads the CSV, picks each method's lr by
dev accuracy at the budget (mean over the seeds that every lr of the method ran, i.e. the sweep's;
a tie goes to the smaller lr), prints the test accuracy mean ± std at every checkpoint, draws
accuracy against forwards (one line and band per method) and judges issue 13's target.

    python bench/bench_compare.py --grid mezo=3e-5,1e-4,3e-4 agzo=1e-4,3e-4,1e-3 --seeds 0
    python bench/bench_compare.py --grid mezo=1e-4 agzo=3e-4 --seeds 1 2 --skip-done
    python bench/bench_compare.py --report
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from pgap.data import load_rotten_tomatoes, task_needs  # noqa: E402
from pgap.finetune import DTYPES, batch_indices  # noqa: E402
from pgap.methods import METHODS, build_optimizer  # noqa: E402
from pgap.models import load_causal_lm, model_needs  # noqa: E402
from pgap.prompts import PromptClassifier  # noqa: E402

FIELDS = ["git_rev", "timestamp", "method", "options", "lr", "eps", "seed", "batch", "budget", "split", "examples",
          "step", "forwards", "accuracy", "train_loss", "seconds"]
DEFAULT_CSV = common.RESULTS_DIR / "compare.csv"


def parse_grid(items: Sequence[str]) -> List[Tuple[str, str, List[float]]]:
    """``method[:opt=v;opt=v]=lr,lr`` -> (method, options text, lrs)."""
    out = []
    for item in items:
        head, _, lrs = item.rpartition("=")
        method, _, options = head.partition(":")
        if method not in METHODS or not lrs:
            raise SystemExit(f"bench_compare.py: error: --grid item {item!r}: expected "
                             f"METHOD[:opt=v;...]=LR[,LR...] with METHOD in {', '.join(METHODS)}")
        out.append((method, options, [float(x) for x in lrs.split(",")]))
    return out


def parse_options(text: str) -> Dict[str, object]:
    """``rank=8;refresh=10;subspace=activation`` -> kwargs (ints, floats, else strings)."""
    out: Dict[str, object] = {}
    for part in filter(None, text.split(";")):
        key, _, value = part.partition("=")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def accuracy(clf: PromptClassifier, model, examples) -> float:
    return clf.correct(model, examples) / len(examples)


def run_one(model, initial: Dict[str, torch.Tensor], clf: PromptClassifier, task, method: str,
            options: str, lr: float, seed: int, args) -> List[dict]:
    """Train one (method, lr, seed) from ``initial`` and return its evaluation rows (also
    appended to the CSV as they come)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(initial[name])
    opt = build_optimizer(method, model, lr=lr, eps=args.eps, seed=seed, **parse_options(options))
    base = dict(git_rev=args.rev, method=method, options=options, lr=lr, eps=args.eps, seed=seed,
                batch=args.batch_size, budget=args.checkpoints[-1])
    if args.dtype != "fp32":
        base["dtype"] = args.dtype
    rows: List[dict] = []
    losses: List[float] = []
    todo = list(args.checkpoints)
    t0 = time.perf_counter()
    step = 0

    def evaluate(split: str, examples) -> None:
        row = dict(base, timestamp=common.utc_now_iso(), split=split, examples=len(examples), step=opt.steps_done,
                   forwards=opt.forwards, accuracy=round(accuracy(clf, model, examples), 4),
                   train_loss=round(statistics.fmean(losses[-20:]), 4) if losses else "",
                   seconds=round(time.perf_counter() - t0, 1))
        rows.append(row)
        common.append_csv(args.csv, args.fields, [row])
        print(f"  {method:<6} {options:<22} lr {lr:<8g} seed {seed}  {split:<4} @ {opt.forwards:>4} "
              f"forwards (step {opt.steps_done}): {row['accuracy']:.3f}  loss {row['train_loss']}"
              f"  {row['seconds']:.0f} s", flush=True)

    per_step = 2
    while todo:
        # stop for a checkpoint when the next step would cross it (its forwards: 2 per step for
        # two-point methods; measured as the last step's cost for the others)
        if opt.forwards + per_step > todo[0]:
            evaluate("test", task.test)
            if len(todo) == 1 and not args.no_dev:
                evaluate("dev", task.dev)
            todo.pop(0)
            continue
        batch = clf.encode([task.train[i] for i in batch_indices(step, args.batch_size,
                                                                 len(task.train), seed)])
        opt.set_token_mask(batch["attention_mask"])
        before = opt.forwards
        loss = opt.step(lambda: clf.loss(model, batch))
        per_step = max(2, opt.forwards - before) if step == 0 else opt.forwards - before
        losses.append(loss)
        step += 1
        if not math.isfinite(loss):
            print(f"  {method} lr {lr:g} seed {seed}: non-finite loss at step {step}; stopping")
            break
    opt.close()  # the optimizer's hooks (side paths, views, sketches) leave the shared model
    return rows


def load_rows(path: Path) -> List[dict]:
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


DevGrid = Dict[Tuple[str, str], Dict[float, Dict[int, float]]]


def dev_grid(rows: List[dict]) -> DevGrid:
    """Dev accuracy at the budget by (method, options), then lr, then seed."""
    dev: DevGrid = {}
    for r in rows:
        if r["split"] == "dev":
            dev.setdefault((r["method"], r["options"]), {}).setdefault(float(r["lr"]), {})[
                int(r["seed"])] = float(r["accuracy"])
    return dev


def choose(dev: DevGrid) -> Dict[Tuple[str, str], float]:
    """Per (method, options): the lr with the best mean dev accuracy at the budget, over the seeds
    every lr of that method was run with (the sweep's seeds; the seeds added afterwards at the
    chosen lr do not change the choice); a tie goes to the smaller lr (when dev cannot tell two
    lrs apart, the one that moves the weights less)."""
    chosen: Dict[Tuple[str, str], float] = {}
    for key, by_lr in dev.items():
        common = set.intersection(*(set(seeds) for seeds in by_lr.values()))
        scores = {lr: statistics.fmean(accs[s] for s in common) if common else statistics.fmean(accs.values())
                  for lr, accs in by_lr.items()}
        chosen[key] = min(scores, key=lambda lr: (-scores[lr], lr))
    return chosen


def report(args) -> int:
    rows = load_rows(args.csv)
    if not rows:
        print(f"bench_compare.py: no rows in {args.csv}")
        return 1
    grid = dev_grid(rows)
    chosen = choose(grid)
    print("lr grid (dev accuracy at the budget, mean over seeds; the choice compares the seeds every lr "
          "ran, a tie going to the smaller lr):")
    for (method, options), by_lr in sorted(grid.items()):
        for lr, accs in sorted(by_lr.items()):
            mark = " <- chosen" if chosen[(method, options)] == lr else ""
            print(f"  {run_label(method, options):<30} lr {lr:<8g} dev {statistics.fmean(accs.values()):.3f} "
                  f"({len(accs)} seed{'s' if len(accs) > 1 else ''}){mark}")
    last: Dict[Tuple[str, str, float, int], dict] = {}
    for r in rows:  # runs stopped before the budget (no dev row): their last evaluation
        key = (r["method"], r["options"], float(r["lr"]), int(r["seed"]))
        if r["method"] != "zero-shot" and r["split"] == "test":
            last[key] = r
    for (method, options, lr, seed), r in sorted(last.items()):
        if lr not in grid.get((method, options), {}):
            print(f"  {run_label(method, options):<30} lr {lr:<8g} stopped at {r['forwards']} forwards "
                  f"(seed {seed}): test {float(r['accuracy']):.3f}, train loss {r['train_loss']}")
    table = summarize(rows, chosen)
    if table["zero_shot"] is not None:
        print(f"\nzero-shot test accuracy: {table['zero_shot']:.3f}")
    print("\ntest accuracy at the chosen lr, mean ± std over seeds:")
    print(f"  {'method':<30} {'lr':<8} {'seeds':<6} " + " ".join(f"{c:>14}" for c in table["checkpoints"]))
    for (method, options, lr), cells in table["rows"].items():
        label = run_label(method, options)
        seeds = max(len(v) for v in cells.values())
        print(f"  {label:<30} {lr:<8g} {seeds:<6} " + " ".join(
            f"{fmt(cells.get(c, [])):>14}" for c in table["checkpoints"]))
    verdict = target_lines(table)
    if verdict:
        print("\n" + "\n".join(verdict))
    if not args.no_plot:
        common.draw_plot(args.plot, lambda path: plot(path, table))
    return 0


def target_lines(table: dict, baseline: str = "mezo", early: int = 200, margin: float = 0.05) -> List[str]:
    """Issue 13's target, per method against ``baseline`` (means over seeds): the first checkpoint
    whose mean reaches the baseline's mean at the budget (needed: ≤ ``early`` forwards), and the
    gap at the budget (needed: ≥ ``margin``)."""
    budget = table["checkpoints"][-1]
    base = next((cells[budget] for (m, _, _), cells in table["rows"].items()
                 if m == baseline and budget in cells), None)
    if base is None:
        return []
    target = statistics.fmean(base)
    lines = [f"target: reach {baseline}'s {budget}-forward test accuracy ({target:.3f}) within {early} "
             f"forwards and end >= {margin * 100:g} points above it at {budget}:"]
    for (method, options, lr), cells in table["rows"].items():
        if method == baseline or budget not in cells:
            continue
        reached = next((c for c in sorted(cells) if statistics.fmean(cells[c]) >= target), None)
        gap = statistics.fmean(cells[budget]) - target
        met = reached is not None and reached <= early and gap >= margin
        label = run_label(method, options)
        lines.append(f"  {label:<30} reaches it at {reached if reached is not None else 'never':>5}, "
                     f"{budget}-forward gap {gap * 100:+.1f} points: {'MET' if met else 'not met'}")
    return lines


def run_label(method: str, options: str) -> str:
    return method + (f" [{options}]" if options else "")


def fmt(values: List[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def summarize(rows: List[dict], chosen: Dict[Tuple[str, str], float]) -> dict:
    """Test accuracies of the chosen lr of each method, by checkpoint (the budget the row was
    evaluated for, i.e. the checkpoint whose forwards it is closest to from below)."""
    checkpoints = sorted({int(r["budget"]) for r in rows if int(r["budget"]) > 0} | {200, 400})
    out: Dict[Tuple[str, str, float], Dict[int, List[float]]] = {}
    for r in rows:
        key = (r["method"], r["options"])
        if r["split"] != "test" or chosen.get(key) != float(r["lr"]):
            continue
        fw = int(r["forwards"])
        point = min((c for c in checkpoints if c >= fw), default=None)
        if point is None:
            continue
        out.setdefault((r["method"], r["options"], float(r["lr"])), {}).setdefault(point, []).append(
            float(r["accuracy"]))
    zero = [float(r["accuracy"]) for r in rows if r["method"] == "zero-shot"]
    return {"checkpoints": checkpoints, "rows": out, "zero_shot": zero[-1] if zero else None}


def plot(path: Path, table: dict) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (method, options, lr), cells in table["rows"].items():
        xs = sorted(cells)
        mean = [statistics.fmean(cells[x]) for x in xs]
        sd = [statistics.stdev(cells[x]) if len(cells[x]) > 1 else 0.0 for x in xs]
        label = f"{run_label(method, options)} lr {lr:g} (n={len(cells[xs[-1]])})"
        line, = ax.plot(xs, mean, "o-", label=label)
        ax.fill_between(xs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                        color=line.get_color(), alpha=0.15)
    if table["zero_shot"] is not None:
        ax.axhline(table["zero_shot"], color="gray", ls=":", lw=1, label="zero-shot")
    ax.set_xlabel("training forward passes")
    ax.set_ylabel("test accuracy")
    ax.set_title("SmolLM2-135M on Rotten Tomatoes: equal forward budgets", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", nargs="+", default=[], metavar="METHOD[:OPTS]=LRS",
                   help="e.g. mezo=1e-4,3e-4 'agzo:rank=8;refresh=10=3e-4'")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--checkpoints", type=int, nargs="+", default=[200, 400, 600])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--dev", type=int, default=200)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/dev/test split")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-dev", action="store_true",
                   help="no dev evaluation (runs at an lr already chosen: the seeds after the sweep)")
    p.add_argument("--skip-done", action="store_true",
                   help="skip (method, options, lr, seed) runs that already reached the budget in the CSV")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="weights' dtype; other than fp32 adds a dtype column (default CSV "
                        "bench/results/compare_<dtype>.csv)")
    p.add_argument("--csv", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=common.RESULTS_DIR / "compare.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--report", action="store_true", help="only summarize the CSV")
    args = p.parse_args(argv)
    args.checkpoints = sorted(args.checkpoints)
    if args.csv is None:
        args.csv = DEFAULT_CSV if args.dtype == "fp32" else DEFAULT_CSV.with_name(f"compare_{args.dtype}.csv")
    args.fields = FIELDS if args.dtype == "fp32" else FIELDS + ["dtype"]
    if args.report:
        common.require("bench_compare.py", plot=not args.no_plot)
        return report(args)
    grid = parse_grid(args.grid)
    if not grid:
        p.error("--grid is required (or --report)")
    common.require("bench_compare.py", ("transformers",),
                   needs=model_needs(None) + task_needs("rotten_tomatoes"))
    if args.threads:
        torch.set_num_threads(args.threads)
    done = {(r["method"], r["options"], float(r["lr"]), int(r["seed"]))
            for r in load_rows(args.csv)
            if int(r["forwards"]) > args.checkpoints[-1] - 3} if args.skip_done else set()
    tok, model = load_causal_lm(None, DTYPES[args.dtype])
    for prm in model.parameters():
        prm.requires_grad_(True)
    initial = {n: prm.detach().clone() for n, prm in model.named_parameters()}
    task = load_rotten_tomatoes(n_train=args.train, n_dev=args.dev, n_test=args.test, seed=args.data_seed)
    clf = PromptClassifier(tok, task.template, task.label_words)
    # a copy of the tree run outside the checkout names its revision in PGAP_GIT_REV
    args.rev = os.environ.get("PGAP_GIT_REV") or common.git_revision()
    print(f"bench_compare: SmolLM2-135M, RT {args.train}/{args.dev}/{args.test}, batch "
          f"{args.batch_size}, checkpoints {args.checkpoints} forwards, rev {args.rev}")
    if not any(r["method"] == "zero-shot" and int(r["examples"]) == args.test
               for r in load_rows(args.csv)):
        row = dict(git_rev=args.rev, timestamp=common.utc_now_iso(), method="zero-shot", options="",
                   lr=0.0, eps=0.0, seed=0, batch=0, budget=0, split="test", examples=args.test,
                   step=0, forwards=0, accuracy=round(accuracy(clf, model, task.test), 4),
                   train_loss="", seconds=0)
        if args.dtype != "fp32":
            row["dtype"] = args.dtype
        common.append_csv(args.csv, args.fields, [row])
        print(f"  zero-shot test accuracy {row['accuracy']:.3f}")
    for seed in args.seeds:
        for method, options, lrs in grid:
            for lr in lrs:
                if (method, options, lr, seed) in done:
                    continue
                run_one(model, initial, clf, task, method, options, lr, seed, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
