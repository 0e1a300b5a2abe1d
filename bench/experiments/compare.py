"""ZO methods and the first-order ceiling on the real task at equal forward budgets: the embedded
SmolLM2-135M on Rotten Tomatoes (MeZO's prompt protocol), every forward counted (the two-point
pair, probes, basis forwards; backprop as 3 forward-equivalents per step).

Protocol v2 (the default; bench/results/compare_v2.csv, docs/finetune.md "Protocol v2"):

- data split by movie (no movie, and no sentence, in two splits; ``--data-seed`` 0): test 2,000
  sentences, dev 500 (to choose lr), train 1,000 (batches drawn from it by each run's seed);
- paired seeds: at a seed every method trains on the same batches (pgap.finetune.train.batch_indices)
  and is tested on the same 2,000 sentences;
- ``--phase sweep``: dev only, evaluations at 300 and 600 forwards (lr pruning, one seed);
  ``--phase final``: test and dev at 300 / 600 / 900 / 1,200 forwards (5 seeds); evaluation when
  the next step would take the run past a checkpoint;
- each evaluation is one row, appended as it happens: test accuracy and cross-entropy, dev
  accuracy and cross-entropy, the mean training loss since the last checkpoint, the peak memory
  of the training steps (pgap.finetune.memory: peak RSS on the CPU), method, lr, seed, dtype, forwards,
  git revision; the per-step training losses go to ``<csv stem>_loss.csv``;
- a progress bar of each run's forwards with its last training loss on stderr (``--no-progress``:
  none);
- resumable: a run whose checkpoints are all in the CSV is skipped; a run killed part-way is
  restarted from step 0 (its trajectory is a function of the seed), and the checkpoints it
  already wrote are neither evaluated nor written again;
- an option ``paired=1`` in a grid item is the run's, not the optimizer's: both points of each
  step in one forward (pgap-finetune's ``--paired-forward``; the method must support pairs);
- ``--grid METHOD=best`` takes the lr the sweep chose (best mean dev accuracy at the sweep's
  budget over the seeds every lr ran; a tie goes to the smaller lr);
- ``--report``: per method and checkpoint the mean test accuracy ± the 95 % CI half-width over
  seeds (t distribution), dev loss, peak memory, share of the first-order gain; per method vs
  MeZO the paired difference (same seeds) with its 95 % CI; a run made in bf16 and in another
  dtype, the other's paired difference from bf16; a plot with CI bands. ``--also CSV ...`` joins
  more CSVs' rows (e.g. float32 runs of the same seeds kept apart).

    python -m bench.experiments.compare --phase sweep --grid mezo=1e-5,3e-5,1e-4 backprop-adamw=1e-5,3e-5,1e-4 --seeds 0 --threads 1
    python -m bench.experiments.compare --phase final --grid mezo=best backprop-adamw=best --seeds 0 1 2 3 4 --threads 1
    python -m bench.experiments.compare --report

Protocol v1 (issue 13; bench/results/compare.csv, compare_bf16.csv: 300 random test sentences,
std over seeds) is no longer run; ``--report --csv bench/results/compare.csv`` still reads its
CSVs (recognized by their header).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from bench import common

from pgap.dtypes import COMPUTE, DTYPES
from pgap.finetune.data import load_rotten_tomatoes, task_needs
from pgap.finetune.memory import PeakMemory
from pgap.finetune.models import load_causal_lm, model_needs
from pgap.finetune.prompts import PromptClassifier
from pgap.finetune.train import Ranks, evaluate, training_steps
from pgap.methods import ALL_METHODS, build_optimizer

FIELDS_V2 = ["protocol", "phase", "git_rev", "timestamp", "method", "options", "lr", "eps", "seed", "dtype",
             "batch", "checkpoint", "step", "forwards", "status", "train_loss", "test_examples",
             "test_accuracy", "test_loss", "dev_examples", "dev_accuracy", "dev_loss", "peak_memory_mb",
             "memory_kind", "train_seconds", "eval_seconds"]
LOSS_FIELDS = ["phase", "git_rev", "method", "options", "lr", "seed", "dtype", "step", "forwards", "loss"]
DEFAULT_CSV_V2 = common.RESULTS_DIR / "compare_v2.csv"
CHECKPOINTS = {"sweep": [300, 600], "final": [300, 600, 900, 1200]}
BASELINE = "mezo"
# two-sided 95 % quantiles of Student's t, df 1..30 (beyond: Fisher's expansion, :func:`t975`)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def parse_grid(items: Sequence[str]) -> List[Tuple[str, str, List[str]]]:
    """``method[:opt=v;opt=v]=lr,lr`` -> (method, options text, lrs: numbers or ``best``)."""
    out = []
    for item in items:
        head, _, lrs = item.rpartition("=")
        method, _, options = head.partition(":")
        ok = method in ALL_METHODS and lrs
        try:
            [float(x) for x in lrs.split(",") if x != "best"]
        except ValueError:
            ok = False
        if not ok:
            raise SystemExit(f"bench/experiments/compare.py: error: --grid item {item!r}: expected "
                             f"METHOD[:opt=v;...]=LR[,LR...] (an LR may be 'best': the sweep's "
                             f"choice) with METHOD in {', '.join(ALL_METHODS)}")
        out.append((method, options, lrs.split(",")))
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


# -- statistics ------------------------------------------------------------------------------
def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (two-sided 95 %)."""
    if df < 1:
        return float("nan")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964  # the normal's quantile, corrected in 1/df and 1/df² (error < 1e-4 beyond df 30)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, half-width of its 95 % t interval, n); the half-width is nan for n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(values[0]), float("nan"), 1
    return statistics.fmean(values), t975(n - 1) * statistics.stdev(values) / math.sqrt(n), n


def paired_ci(method: Dict[int, float], baseline: Dict[int, float]) -> Tuple[float, float, int]:
    """:func:`mean_ci` of method − baseline over the seeds both ran (the paired difference)."""
    seeds = sorted(set(method) & set(baseline))
    return mean_ci([method[s] - baseline[s] for s in seeds])


# -- runs ------------------------------------------------------------------------------------
RunKey = Tuple[str, str, str, float, int, str]  # phase, method, options, lr, seed, dtype


def run_key(r: dict) -> RunKey:
    return (r["phase"], r["method"], r["options"], float(r["lr"]), int(r["seed"]), r["dtype"])


def done_checkpoints(rows: Sequence[dict]) -> Dict[RunKey, set]:
    """The checkpoints each run already wrote (what a restarted run skips)."""
    done: Dict[RunKey, set] = {}
    for r in rows:
        done.setdefault(run_key(r), set()).add(int(r["checkpoint"]))
    return done


def done_now(csv_path: Path, key: RunKey) -> set:
    """The checkpoints of run ``key`` in the CSV as it is now: another process (a second queue
    given the same run) may have written some since this one started."""
    return done_checkpoints(common.read_csv_rows(csv_path)).get(key, set())


def run_one(model, initial: Dict[str, torch.Tensor], clf: PromptClassifier, task, method: str,
            options: str, lr: float, seed: int, args, done: set) -> None:
    """Train one (method, options, lr, seed) from ``initial`` with pgap-finetune's training loop,
    evaluating (and appending a row) at every checkpoint not in ``done``; a progress bar of its
    forwards on stderr unless ``args.no_progress``."""
    from tqdm import tqdm  # noqa: PLC0415 - after common.require's check

    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(initial[name])
    kwargs = parse_options(options)
    paired = bool(kwargs.pop("paired", 0))  # the training loop's option (pgap.paired), not the optimizer's
    opt = build_optimizer(method, model, lr=lr, eps=args.eps, seed=seed, **kwargs)
    if paired and not opt.supports_pairs:
        raise SystemExit(f"bench/experiments/compare.py: error: {method} with options {options!r} "
                         "does not take paired forwards (paired=1)")
    base = dict(protocol="v2", phase=args.phase, git_rev=args.rev, method=method, options=options,
                lr=lr, eps=args.eps, seed=seed, dtype=args.dtype, batch=args.batch_size)
    single = Ranks()
    peak = PeakMemory(next(model.parameters()).device)
    steps = training_steps(opt, model, clf, task.train, args.batch_size, seed, single, peak,
                           catch_nonfinite=True, paired=paired)
    curve: List[dict] = []  # this segment's per-step losses (written with the checkpoint's row)
    losses: List[float] = []
    todo = list(args.checkpoints)
    key: RunKey = (args.phase, method, options, float(lr), int(seed), args.dtype)
    status, per_step, t_train = "ok", 2, 0.0
    bar = tqdm(total=args.checkpoints[-1], unit="fwd", disable=args.no_progress, leave=False,
               desc=f"{run_label(method, options)} lr {lr:g} seed {seed}")
    while todo:
        # a checkpoint when the next step would cross it (its forwards: measured on the last step)
        if status != "ok" or opt.forwards + per_step > todo[0]:
            checkpoint = todo.pop(0)
            if checkpoint not in done and checkpoint not in done_now(args.csv, key):
                t = time.perf_counter()
                test = evaluate(clf, model, task.test, single) if args.phase != "sweep" else ("", "")
                dev = evaluate(clf, model, task.dev, single)
                row = dict(base, timestamp=common.utc_now_iso(), checkpoint=checkpoint, step=opt.steps_done,
                           forwards=opt.forwards, status=status,
                           train_loss=round(statistics.fmean(losses), 5) if losses else "",
                           test_examples=len(task.test) if test[0] != "" else 0,
                           test_accuracy=_round(test[0]), test_loss=_round(test[1]),
                           dev_examples=len(task.dev), dev_accuracy=_round(dev[0]), dev_loss=_round(dev[1]),
                           peak_memory_mb=round(peak.mb, 1), memory_kind=peak.kind,
                           train_seconds=round(t_train, 1), eval_seconds=round(time.perf_counter() - t, 1))
                common.append_csv(args.loss_csv, LOSS_FIELDS, curve)
                common.append_csv(args.csv, FIELDS_V2, [row])
                print(f"  {run_label(method, options):<24} lr {lr:<8g} seed {seed} @ {opt.forwards:>4} forwards "
                      f"(step {opt.steps_done}): test {row['test_accuracy'] or '-'}  dev {row['dev_accuracy']} "
                      f"(loss {row['dev_loss']})  train loss {row['train_loss']}  {status}  "
                      f"{t_train:.0f} s + eval {row['eval_seconds']:.0f} s  peak {peak.mb:.0f} MB", flush=True)
            curve, losses = [], []
            continue
        before = opt.forwards
        step, loss, seconds = next(steps)
        t_train += seconds
        per_step = max(per_step, opt.forwards - before) if step == 1 else opt.forwards - before
        if not math.isfinite(loss):  # the weights stay at the last finite step's
            status = f"diverged at step {step}"
            continue
        losses.append(loss)
        bar.update(min(opt.forwards, bar.total) - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        curve.append(dict(phase=args.phase, git_rev=args.rev, method=method, options=options, lr=lr,
                          seed=seed, dtype=args.dtype, step=step, forwards=opt.forwards, loss=round(loss, 5)))
    bar.close()
    opt.close()  # the optimizer's hooks (side paths, views, sketches) leave the shared model


def _round(x) -> object:
    return round(x, 5) if isinstance(x, float) else x


def sweep_choice(rows: Sequence[dict], dtype: str) -> Dict[Tuple[str, str], float]:
    """Per (method, options): the lr of the sweep (``dtype`` rows) with the best mean dev accuracy
    at the sweep's budget (:func:`choose`)."""
    sweep = [r for r in rows if r["phase"] == "sweep" and r["dtype"] == dtype]
    if not sweep:
        return {}
    budget = max(int(r["checkpoint"]) for r in sweep)
    grid: DevGrid = {}
    for r in sweep:
        if int(r["checkpoint"]) == budget and r["dev_accuracy"] != "":
            grid.setdefault((r["method"], r["options"]), {}).setdefault(float(r["lr"]), {})[
                int(r["seed"])] = float(r["dev_accuracy"])
    return choose(grid)


def resolve_lrs(grid, rows: Sequence[dict], dtype: str) -> List[Tuple[str, str, float]]:
    """(method, options, lr) runs of ``grid``, ``best`` replaced by the sweep's choice."""
    chosen = sweep_choice(rows, dtype)
    out = []
    for method, options, lrs in grid:
        for lr in lrs:
            if lr == "best":
                if (method, options) not in chosen:
                    raise SystemExit(f"bench/experiments/compare.py: error: {run_label(method, options)}=best: no "
                                     f"{dtype} sweep rows in the CSV to choose from")
                out.append((method, options, chosen[(method, options)]))
            else:
                out.append((method, options, float(lr)))
    return out


def zero_shot(model, clf, task, args, rows: Sequence[dict]) -> None:
    """The untrained model's row (phase and method ``zero-shot``), once per dtype."""
    if any(r["phase"] == "zero-shot" and r["dtype"] == args.dtype for r in rows):
        return
    t = time.perf_counter()
    single = Ranks()
    test, dev = evaluate(clf, model, task.test, single), evaluate(clf, model, task.dev, single)
    row = dict(protocol="v2", phase="zero-shot", git_rev=args.rev, timestamp=common.utc_now_iso(),
               method="zero-shot", options="", lr=0.0, eps=0.0, seed=0, dtype=args.dtype, batch=0,
               checkpoint=0, step=0, forwards=0, status="ok", train_loss="",
               test_examples=len(task.test), test_accuracy=_round(test[0]), test_loss=_round(test[1]),
               dev_examples=len(task.dev), dev_accuracy=_round(dev[0]), dev_loss=_round(dev[1]),
               peak_memory_mb="", memory_kind="", train_seconds=0,
               eval_seconds=round(time.perf_counter() - t, 1))
    common.append_csv(args.csv, FIELDS_V2, [row])
    print(f"  zero-shot: test {row['test_accuracy']} (loss {row['test_loss']}), dev {row['dev_accuracy']} "
          f"(loss {row['dev_loss']}), {row['eval_seconds']:.0f} s")


def run_v2(args, grid) -> int:
    rows = common.read_csv_rows(args.csv)
    runs = resolve_lrs(grid, rows, args.dtype)
    done = done_checkpoints(rows)
    todo = [(m, o, lr, s) for s in args.seeds for m, o, lr in runs
            if not set(args.checkpoints) <= done.get((args.phase, m, o, lr, s, args.dtype), set())]
    if not todo:
        print("bench_compare: every run of this grid is in the CSV")
        return 0
    common.require("bench/experiments/compare.py", ("transformers", "tqdm"),
                   needs=model_needs(None) + task_needs("rotten_tomatoes"))
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, model = load_causal_lm(None, DTYPES[args.dtype])
    for prm in model.parameters():
        prm.requires_grad_(True)
    initial = {n: prm.detach().clone() for n, prm in model.named_parameters()}
    task = load_rotten_tomatoes(n_train=args.train, n_dev=args.dev, n_test=args.test, seed=args.data_seed,
                                by_movie=True)
    clf = PromptClassifier(tok, task.template, task.label_words, compute_dtype=COMPUTE.get(args.dtype))
    print(f"bench_compare v2 ({args.phase}): SmolLM2-135M {args.dtype}, RT by movie {args.train}/{args.dev}/"
          f"{args.test}, batch {args.batch_size}, checkpoints {args.checkpoints} forwards, rev {args.rev}, "
          f"{len(todo)} runs to do")
    zero_shot(model, clf, task, args, rows)
    for method, options, lr, seed in todo:
        key = (args.phase, method, options, lr, seed, args.dtype)
        written = done.get(key, set()) | done_now(args.csv, key)
        if set(args.checkpoints) <= written:
            print(f"  {run_label(method, options)} lr {lr:g} seed {seed}: written meanwhile (another "
                  "process), skipped")
            continue
        run_one(model, initial, clf, task, method, options, lr, seed, args, written)
    return 0


# -- the report ------------------------------------------------------------------------------
Group = Tuple[str, str, float, str]  # method, options, lr, dtype


def final_table(rows: Sequence[dict]) -> Dict[Group, Dict[int, Dict[int, dict]]]:
    """Final-phase rows by (method, options, lr, dtype), checkpoint, seed (the last row of a key
    wins)."""
    out: Dict[Group, Dict[int, Dict[int, dict]]] = {}
    for r in rows:
        if r["phase"] == "final":
            out.setdefault((r["method"], r["options"], float(r["lr"]), r["dtype"]), {}).setdefault(
                int(r["checkpoint"]), {})[int(r["seed"])] = r
    return out


def column(cells: Dict[int, dict], name: str) -> Dict[int, float]:
    """seed -> float(cell[name]) where the cell has a value."""
    return {s: float(r[name]) for s, r in cells.items() if r.get(name, "") != ""}


def baseline_group(table, dtype: str, chosen: Dict[Tuple[str, str], float]) -> Optional[Group]:
    """MeZO's group of ``dtype``: the sweep's lr if it has final rows, else the lr with most seeds."""
    mine = [g for g in table if g[0] == BASELINE and g[1] == "" and g[3] == dtype]
    if not mine:
        return None
    pick = [g for g in mine if chosen.get((BASELINE, "")) == g[2]]
    return pick[0] if pick else max(mine, key=lambda g: max(len(c) for c in table[g].values()))


def fmt_ci(mean: float, half: float, n: int, scale: float = 100.0, sign: str = "") -> str:
    if n == 0:
        return "-"
    half_text = "n/a" if math.isnan(half) else f"{half * scale:.1f}"
    return f"{mean * scale:{sign}.1f} ± {half_text} ({n})"


def paired_cell(cells: Dict[int, dict], base_cells: Dict[int, dict]) -> str:
    """The paired difference of test accuracy, ``cells`` − ``base_cells`` (seed -> row), in points:
    mean ± 95 % CI (seeds), and * when the CI excludes 0."""
    m, h, n = paired_ci(column(cells, "test_accuracy"), column(base_cells, "test_accuracy"))
    return f"{fmt_ci(m, h, n, sign='+')}{'*' if n > 1 and abs(m) > h else ' '}"


def paired_lines(table, base: Group, groups: Sequence[Group], checkpoints: Sequence[int]) -> List[str]:
    """Per group, its paired difference from ``base`` at each checkpoint (test accuracy, points)."""
    lines = []
    for g in groups:
        cells = [paired_cell(table[g].get(c, {}), table[base].get(c, {})) for c in checkpoints]
        lines.append(f"  {run_label(g[0], g[1]):<26} {g[2]:<8g} " + " ".join(f"{c:>18}" for c in cells))
    return lines


def dtype_pair_lines(table, base_dtype: str = "bf16") -> List[str]:
    """A run (method, options, lr) made in ``base_dtype`` and in another dtype: the other's paired
    difference from it (same seeds, so the same batches and directions) at the checkpoints both
    have, test accuracy in points, mean ± 95 % CI; * = the CI excludes 0. Issue 23's check that
    bf16 stays within 2 points of float32."""
    lines = []
    for g in sorted(table):
        if g[3] != base_dtype:
            continue
        others = [h for h in sorted(table) if h[:3] == g[:3] and h[3] != base_dtype]
        for h in others:
            cells = [f"@{c}: {paired_cell(table[h][c], table[g][c])}"
                     for c in sorted(set(table[g]) & set(table[h]))]
            if cells:
                lines.append(f"  {run_label(g[0], g[1]):<26} {g[2]:<8g} {h[3]} − {base_dtype}  " + "  ".join(cells))
    if lines:
        lines.insert(0, f"== dtypes: paired difference from {base_dtype} (same method, options, lr and "
                        "seeds), test accuracy points, mean ± 95 % CI (seeds); * = the CI excludes 0")
    return lines


def report_v2(args, rows: List[dict]) -> int:
    dtypes = sorted({r["dtype"] for r in rows})
    for dtype in dtypes:
        chosen = sweep_choice(rows, dtype)
        sweep = [r for r in rows if r["phase"] == "sweep" and r["dtype"] == dtype]
        if sweep:
            budget = max(int(r["checkpoint"]) for r in sweep)
            print(f"== {dtype}: lr sweep (dev accuracy / dev loss at {budget} forwards, mean over seeds; "
                  "the choice: best dev accuracy, a tie to the smaller lr)")
            by: Dict[Tuple[str, str, float], List[dict]] = {}
            for r in sweep:
                if int(r["checkpoint"]) == budget:
                    by.setdefault((r["method"], r["options"], float(r["lr"])), []).append(r)
            for (method, options, lr), rs in sorted(by.items()):
                mark = "  <- chosen" if chosen.get((method, options)) == lr else ""
                diverged = [r["status"] for r in rs if r["status"] != "ok"]
                print(f"  {run_label(method, options):<26} lr {lr:<8g} dev acc "
                      f"{statistics.fmean(float(r['dev_accuracy']) for r in rs):.3f}  loss "
                      f"{statistics.fmean(float(r['dev_loss']) for r in rs):.4f}  ({len(rs)} seed"
                      f"{'s' if len(rs) > 1 else ''}){' ' + diverged[0] if diverged else ''}{mark}")
        zs = [r for r in rows if r["phase"] == "zero-shot" and r["dtype"] == dtype]
        zero = float(zs[-1]["test_accuracy"]) if zs else None
        if zs:
            print(f"== {dtype}: zero-shot test accuracy {zero:.4f} (loss {zs[-1]['test_loss']}), dev "
                  f"{zs[-1]['dev_accuracy']} (loss {zs[-1]['dev_loss']})")
        table = {g: c for g, c in final_table(rows).items() if g[3] == dtype}
        if not table:
            continue
        checkpoints = sorted({c for cells in table.values() for c in cells})
        print(f"== {dtype}: test accuracy (points), mean ± 95 % CI half-width (seeds), t distribution; peak MB: the least over seeds")
        print(f"  {'method':<26} {'lr':<8} " + " ".join(f"{c:>17}" for c in checkpoints)
              + f" {'dev loss @' + str(checkpoints[-1]):>14} {'peak MB':>8}")
        for g in sorted(table):
            cells = table[g]
            last = cells.get(checkpoints[-1], {})
            dev_loss = column(last, "dev_loss")
            print(f"  {run_label(g[0], g[1]):<26} {g[2]:<8g} " + " ".join(
                f"{fmt_ci(*mean_ci(list(column(cells.get(c, {}), 'test_accuracy').values()))):>17}"
                for c in checkpoints)
                + f" {statistics.fmean(dev_loss.values()) if dev_loss else float('nan'):>14.4f}"
                + f" {least_peak_mb(last):>8.0f}")
        base = baseline_group(table, dtype, chosen)
        if base is not None:
            print(f"== {dtype}: paired difference vs {BASELINE} lr {base[2]:g} (same seeds), points, "
                  "mean ± 95 % CI (seeds); * = the CI excludes 0")
            print("\n".join(paired_lines(table, base, [g for g in sorted(table) if g != base], checkpoints)))
            print("\n".join(target_v2(table, base)))
        controls = [g for g in sorted(table) if g[0] == "subzero" and g[1] == ""]
        probes = [g for g in sorted(table) if g[0] == "pgap" and "subspace=probe" in g[1]]
        for control in controls[:1]:  # what P-GAP's probes and alignment add over a random subspace
            if probes:
                print(f"== {dtype}: paired difference vs the SubZero control (random subspace, lr "
                      f"{control[2]:g}), points, mean ± 95 % CI (seeds); * = the CI excludes 0")
                print("\n".join(paired_lines(table, control, probes, checkpoints)))
        share = first_order_share(table, zero, checkpoints[-1])
        if share:
            print("\n".join(share))
    pairs = dtype_pair_lines(final_table(rows))
    if pairs:
        print("\n".join(pairs))
    revs = sorted({r["git_rev"] for r in rows if r["phase"] == "final"})
    if revs:
        print(f"final rows from revision(s): {', '.join(revs)}")
    if not args.no_plot:
        common.draw_plot(args.plot, lambda path: plot_v2(path, rows))
    return 0


def target_v2(table, base: Group, early: int = 600, late: int = 1200, margin: float = 0.03) -> List[str]:
    """Issue 22's target per method: paired advantage over the baseline with a 95 % CI lower bound
    >= ``margin`` at ``early`` forwards, and a mean at ``early`` >= the baseline's at ``late``."""
    ref = column(table[base].get(late, {}), "test_accuracy")
    if not ref:
        return []
    target = statistics.fmean(ref.values())
    lines = [f"target: paired 95 % CI lower bound >= +{margin * 100:g} points over {BASELINE} at {early} "
             f"forwards, and by {early} forwards {BASELINE}'s {late}-forward accuracy ({target:.4f}):"]
    for g in sorted(table):
        if g == base or early not in table[g]:
            continue
        acc = column(table[g][early], "test_accuracy")
        m, h, n = paired_ci(acc, column(table[base].get(early, {}), "test_accuracy"))
        low = m - h if n > 1 else float("nan")
        reached = statistics.fmean(acc.values()) >= target
        met = n > 1 and low >= margin and reached
        lines.append(f"  {run_label(g[0], g[1]):<26} lr {g[2]:<8g} lower bound {low * 100:+.1f}, "
                     f"{'reaches' if reached else 'does not reach'} it: {'MET' if met else 'not met'}")
    return lines


def least_peak_mb(cells: Dict[int, dict]) -> float:
    """The smallest peak memory over the seeds of one checkpoint (nan if none). Not the mean: rows
    written before pgap.finetune.memory trimmed the heap charged a run with the pages an earlier
    run of the same process had freed (MeZO after AdamW: 3,368 MB, alone 1,293 MB)."""
    mem = column(cells, "peak_memory_mb")
    return min(mem.values()) if mem else float("nan")


def first_order_share(table, zero: Optional[float], checkpoint: int) -> List[str]:
    """Each method's gain over zero-shot at ``checkpoint`` as a share of the best first-order
    baseline's (means over seeds), with peak memories."""
    def mean_at(g):
        acc = column(table[g].get(checkpoint, {}), "test_accuracy")
        return statistics.fmean(acc.values()) if acc else None

    first = [g for g in table if g[0].startswith("backprop") and mean_at(g) is not None]
    if zero is None or not first:
        return []
    best = max(first, key=mean_at)
    gain = mean_at(best) - zero
    lines = [f"share of the first-order gain at {checkpoint} forwards ({run_label(best[0], best[1])} lr "
             f"{best[2]:g}: {gain * 100:+.1f} points over zero-shot):"]
    for g in sorted(table):
        m = mean_at(g)
        if m is None:
            continue
        lines.append(f"  {run_label(g[0], g[1]):<26} lr {g[2]:<8g} {(m - zero) / gain * 100 if gain else float('nan'):6.0f} %"
                     f"  peak memory {least_peak_mb(table[g][checkpoint]):.0f} MB")
    return lines


def plot_v2(path: Path, rows: List[dict]) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    table = final_table(rows)
    fig, (acc_ax, diff_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    bases = {dtype: baseline_group(table, dtype, sweep_choice(rows, dtype)) for dtype in {g[3] for g in table}}
    for g in sorted(table):
        cells = table[g]
        xs = sorted(cells)
        stats = [mean_ci(list(column(cells[x], "test_accuracy").values())) for x in xs]
        label = f"{run_label(g[0], g[1])} lr {g[2]:g} {g[3]} (n={stats[-1][2]})"
        line, = acc_ax.plot(xs, [s[0] for s in stats], "o-", label=label)
        _band(acc_ax, xs, stats, line.get_color())
        base = bases[g[3]]
        if base is not None and g != base:
            diffs = [paired_ci(column(cells[x], "test_accuracy"), column(table[base].get(x, {}), "test_accuracy"))
                     for x in xs]
            diff_ax.plot(xs, [d[0] for d in diffs], "o-", color=line.get_color(), label=label)
            _band(diff_ax, xs, diffs, line.get_color())
    zs = [float(r["test_accuracy"]) for r in rows if r["phase"] == "zero-shot"]
    if zs:
        acc_ax.axhline(zs[-1], color="gray", ls=":", lw=1, label="zero-shot")
    diff_ax.axhline(0.0, color="gray", lw=1)
    acc_ax.set(xlabel="training forward passes", ylabel="test accuracy (2,000 sentences)",
               title="mean and 95 % CI over seeds")
    diff_ax.set(xlabel="training forward passes", ylabel=f"test accuracy − {BASELINE}'s (same seed)",
                title=f"paired difference vs {BASELINE}, 95 % CI")
    for ax in (acc_ax, diff_ax):
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    fig.suptitle("SmolLM2-135M on Rotten Tomatoes (split by movie), protocol v2", fontsize=9)
    common.save_figure(fig, path)


def _band(ax, xs, stats, color) -> None:
    lo = [m - (h if not math.isnan(h) else 0.0) for m, h, _ in stats]
    hi = [m + (h if not math.isnan(h) else 0.0) for m, h, _ in stats]
    ax.fill_between(xs, lo, hi, color=color, alpha=0.15)


# -- protocol v1 (issue 13): its CSVs stay readable --------------------------------------------

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


def report_v1(args, rows: List[dict]) -> int:
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
        common.draw_plot(args.plot, lambda path: plot_v1(path, table))
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


def plot_v1(path: Path, table: dict) -> None:
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


def report(args) -> int:
    """Summarize the CSV: protocol v2's report, or v1's for a v1 CSV (recognized by its header)."""
    rows = common.read_csv_rows(args.csv)
    for extra in args.also:
        rows += common.read_csv_rows(extra)
    if not rows:
        print(f"bench/experiments/compare.py: no rows in {args.csv}")
        return 1
    return report_v2(args, rows) if "protocol" in rows[0] else report_v1(args, rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", nargs="+", default=[], metavar="METHOD[:OPTS]=LRS",
                   help="e.g. mezo=1e-5,3e-5 backprop-adamw=best 'agzo:rank=8;refresh=10=3e-4'")
    p.add_argument("--phase", choices=sorted(CHECKPOINTS), default="final",
                   help="sweep: dev only at 300/600 forwards; final: test and dev at 300..1200")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--checkpoints", type=int, nargs="+", default=None,
                   help="forwards at which to evaluate (default by --phase); the last is the budget")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--dev", type=int, default=500)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the split by movie")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV_V2,
                   help="the rows (the training losses go to <stem>_loss.csv beside it)")
    p.add_argument("--plot", type=Path, default=None, help="default: the CSV's path with .png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar of each run's forwards")
    p.add_argument("--report", action="store_true", help="only summarize the CSV")
    p.add_argument("--also", type=Path, nargs="+", default=[], metavar="CSV",
                   help="--report: more protocol v2 CSVs whose rows join the report (e.g. another "
                        "dtype's runs of the same seeds)")
    args = p.parse_args(argv)
    if args.plot is None:
        args.plot = args.csv.with_suffix(".png")
    if args.report:
        common.require("bench/experiments/compare.py", plot=not args.no_plot)
        return report(args)
    grid = parse_grid(args.grid)
    if not grid:
        p.error("--grid is required (or --report)")
    args.checkpoints = sorted(args.checkpoints or CHECKPOINTS[args.phase])
    args.loss_csv = args.csv.with_name(args.csv.stem + "_loss.csv")
    # a copy of the tree run outside the checkout names its revision in PGAP_GIT_REV
    args.rev = os.environ.get("PGAP_GIT_REV") or common.git_revision()
    return run_v2(args, grid)


if __name__ == "__main__":
    sys.exit(main())
