"""Loss against forward passes for the pgap zeroth-order optimizers at an equal forward budget.

Methods: MeZO, P-GAP, MeZO-GV, MeZO-Greedy and LDSD (``pgap.MeZO``, ``pgap.PGAP``,
``pgap.MeZOGV``, ``pgap.MeZOGreedy``, ``pgap.LDSD``). Problems, both built here (no downloads):

* ``lowrank-grad``: one ``nn.Linear(96, 48)`` (d = 4,656 parameters with the bias) fitted by
  least squares on a fixed batch of 512 Gaussian inputs to a rank-2 linear teacher. The student
  starts near zero, so the residual, hence the gradient of the weight, is (nearly) rank 2: the
  case P-GAP's low-rank gradient subspace is meant for.
* ``tiny-lm``: a random-init ``transformers.LlamaForCausalLM`` (vocab 64, hidden 32, 2 layers,
  tied embeddings; 20,640 parameters) on a fixed batch of 8 sequences of 32 tokens, each a
  4-token motif drawn from 16 of the 64 tokens, repeated (so the loss can go down);
  loss = ``model(input_ids, labels=input_ids).loss``.

The problem (data and initial weights) is fixed (``--problem-seed``); the ``--seeds`` seeds
0, 1, … are the optimizers' seeds, so the bands show the optimizers' own randomness. Every method
runs until ``opt.forwards >= budget`` (it may overshoot by less than one step; the table gives
the forwards actually spent). Every ``--record-every`` forwards the loss is evaluated under
``torch.no_grad()`` outside the optimizer (not counted as forwards) and recorded.

Hyperparameters: without ``--tune`` each method uses the fixed table ``DEFAULTS`` below; with
``--tune`` each method runs every setting of ``TUNE_GRID`` on seed 0 at the full budget and keeps
the lowest final loss (a diverged run counts as infinite loss), then runs all seeds with it.

Writes a table per problem (method, settings, forwards per step, final loss mean ± std over the
seeds, min–max, ratio to MeZO), a computed verdict per problem, CSV rows (run metadata + problem,
method, seed, forwards, loss per recorded point) appended to bench/results/methods.csv and a plot
bench/results/methods.png (loss vs forwards, mean over seeds with a min–max band).

Example::

    python -m bench.experiments.methods --quick --no-csv --no-plot
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from bench import common

import pgap

Problem = Tuple[nn.Module, Callable[[], torch.Tensor]]

# -- problems ----------------------------------------------------------------------------------
LOWRANK_SHAPE = (48, 96)  # (d_out, d_in) of the student nn.Linear
LOWRANK_N, LOWRANK_TEACHER_RANK = 512, 2
LM_VOCAB, LM_SUBVOCAB, LM_MOTIF, LM_BATCH, LM_LEN = 64, 16, 4, 8, 32


def lowrank_problem(seed: int) -> Problem:
    """Least squares Y = X·Tᵀ with a rank-2 teacher T; the student nn.Linear starts near zero, so
    ∇_W L = (2/(n·d_out))·(W·Xᵀ + b − Yᵀ)·X ≈ −(2/d_out)·T·Σ̂ is nearly rank 2. Initial loss ≈ 1."""
    d_out, d_in = LOWRANK_SHAPE
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(LOWRANK_N, d_in, generator=g)
    T = (torch.randn(d_out, LOWRANK_TEACHER_RANK, generator=g)
         @ torch.randn(LOWRANK_TEACHER_RANK, d_in, generator=g)) / math.sqrt(LOWRANK_TEACHER_RANK * d_in)
    Y = X @ T.T
    student = nn.Linear(d_in, d_out)
    with torch.no_grad():
        student.weight.copy_(0.01 * torch.randn(d_out, d_in, generator=g))
        student.bias.zero_()
    return student, lambda: ((student(X) - Y) ** 2).mean()


def tiny_lm_problem(seed: int) -> Problem:
    """A 2-layer random-init Llama (tied embeddings) on repeated 4-token motifs."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.set_verbosity_error()
    cfg = LlamaConfig(vocab_size=LM_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=LM_LEN,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    sub = torch.randperm(LM_VOCAB, generator=g)[:LM_SUBVOCAB]
    motifs = sub[torch.randint(0, LM_SUBVOCAB, (LM_BATCH, LM_MOTIF), generator=g)]
    ids = motifs.repeat(1, LM_LEN // LM_MOTIF).contiguous()
    return model, lambda: model(input_ids=ids, labels=ids).loss


PROBLEMS: Dict[str, Callable[[int], Problem]] = {"lowrank-grad": lowrank_problem,
                                                 "tiny-lm": tiny_lm_problem}
BUDGETS = {"lowrank-grad": 3000, "tiny-lm": 1500}
QUICK_BUDGETS = {"lowrank-grad": 80, "tiny-lm": 40}
LOG_Y = {"lowrank-grad": True, "tiny-lm": False}

# -- methods and hyperparameters ---------------------------------------------------------------
METHODS: Dict[str, Callable[..., pgap.ZOOptimizer]] = {
    "MeZO": pgap.MeZO, "P-GAP": pgap.PGAP, "MeZO-GV": pgap.MeZOGV,
    "MeZO-Greedy": pgap.MeZOGreedy, "LDSD": pgap.LDSD}
BASELINE = "MeZO"
COMMON = {"eps": 1e-3}
# Fixed options per method (the same on every problem; lr and lr_mu come from DEFAULTS).
FIXED: Dict[str, Dict[str, Any]] = {
    "MeZO": {},
    "P-GAP": {"rank": 4, "probes": 10, "window": 20, "scale": "none"},
    "MeZO-GV": {"num_probes": 4},
    "MeZO-Greedy": {"num_probes": 4},
    "LDSD": {"num_probes": 5, "sigma": 1.0},
}
# Per problem and method: the settings without --tune. How they were chosen: by hand, with sweeps
# on seed 0 (problem seed 0) at the default budgets, keeping the lowest final loss; one seed, so
# neighbouring values within ~5-10 % of each other are a toss-up. Values tried (final loss):
#   lowrank-grad  MeZO lr 3e-3 .745, 4e-3 .711, 5e-3 .699, 6e-3 .708, 8e-3 .792, 1e-2 .992,
#                 2e-2 diverges; P-GAP (scale none, window 20) rank 2: lr .1 1.01, .3 .982,
#                 .5 .966, 1 diverges; rank 4: lr .3 .932, .5 .918, .7 1.01; rank 4 window 50
#                 lr .5 .930; scale="subzero" rank 2: lr 3e-3 .934, 6e-3 1.01, 1e-2 diverges;
#                 MeZO-GV lr 2e-3 .879, 5e-3 .797, 7e-3 .827, 1e-2 1.01; MeZO-Greedy lr 2e-3
#                 .919, 3.5e-3 .873, 5e-3 .857, 7e-3 .880, 1e-2 1.02; LDSD lr 5e-3 with lr_mu
#                 0 .857, .1 .857, 1 .849, 3 .833, 30 .825, 300 .983; lr 3.5e-3 lr_mu 10 .793,
#                 30 .780, 50 .825, 100 .891; lr 7e-3 lr_mu 10 .855; lr 2e-3 lr_mu 30 .753.
#   tiny-lm       MeZO lr 1e-3 3.02, 2e-3 2.49, 3e-3 2.10, 4e-3 2.38, 5e-3 8.3, 1e-2 diverges;
#                 P-GAP (scale none, window 20) rank 4: lr .05 3.03, .1 2.81, .15 2.66, .2 and
#                 .3 blow up; rank 2: lr .1 3.31, .2 2.78; rank 8: lr .05 2.44, .1 blows up;
#                 scale="subzero" rank 4: lr 1e-3 3.04, 3e-3 2.86; MeZO-GV lr 2e-3 2.76, 3e-3
#                 2.49, 4e-3 2.51, 5e-3 4.29; MeZO-Greedy lr 2e-3 3.13, 3e-3 2.68, 4e-3 2.83,
#                 5e-3 3.04; LDSD lr 3e-3 with lr_mu 1 2.68, 10 2.02, 30 4.41; lr 2e-3 lr_mu 10
#                 2.16, 30 1.63, 60 3.92; lr 1e-3 lr_mu 30 2.04, 100 2.42.
DEFAULTS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "lowrank-grad": {
        "MeZO": {"lr": 5e-3},
        "P-GAP": {"lr": 0.5},
        "MeZO-GV": {"lr": 5e-3},
        "MeZO-Greedy": {"lr": 5e-3},
        "LDSD": {"lr": 2e-3, "lr_mu": 30.0},
    },
    "tiny-lm": {
        "MeZO": {"lr": 3e-3},
        "P-GAP": {"lr": 0.15},
        "MeZO-GV": {"lr": 3e-3},
        "MeZO-Greedy": {"lr": 3e-3},
        "LDSD": {"lr": 2e-3, "lr_mu": 30.0},
    },
}
# --tune: each entry overrides DEFAULTS (three settings per method per problem, around the default).
TUNE_GRID: Dict[str, Dict[str, List[Dict[str, Any]]]] = {
    "lowrank-grad": {
        "MeZO": [{"lr": 3e-3}, {"lr": 5e-3}, {"lr": 8e-3}],
        "P-GAP": [{"lr": 0.3}, {"lr": 0.5}, {"lr": 0.7}],
        "MeZO-GV": [{"lr": 3e-3}, {"lr": 5e-3}, {"lr": 7e-3}],
        "MeZO-Greedy": [{"lr": 3.5e-3}, {"lr": 5e-3}, {"lr": 7e-3}],
        "LDSD": [{"lr_mu": 10.0}, {"lr_mu": 30.0}, {"lr_mu": 100.0}],
    },
    "tiny-lm": {
        "MeZO": [{"lr": 2e-3}, {"lr": 3e-3}, {"lr": 4e-3}],
        "P-GAP": [{"lr": 0.1}, {"lr": 0.15}, {"lr": 0.2}],
        "MeZO-GV": [{"lr": 2e-3}, {"lr": 3e-3}, {"lr": 4e-3}],
        "MeZO-Greedy": [{"lr": 2e-3}, {"lr": 3e-3}, {"lr": 4e-3}],
        "LDSD": [{"lr_mu": 10.0}, {"lr_mu": 30.0}, {"lr_mu": 60.0}],
    },
}
UNSTABLE = 1.5  # a run whose recorded loss ever exceeds this multiple of the initial loss is flagged
SHOWN = ("lr", "lr_mu", "rank", "window", "probes", "num_probes", "scale")  # settings in the table

FIELDS = ["problem", "method", "seed", "settings", "tuned", "budget", "step", "forwards", "loss"]


def settings_for(problem: str, method: str, override: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {**COMMON, **FIXED[method], **DEFAULTS[problem][method], **(override or {})}


def describe(settings: Dict[str, Any]) -> str:
    return " ".join(f"{k}={settings[k]:g}" if isinstance(settings[k], float) else f"{k}={settings[k]}"
                    for k in SHOWN if k in settings)


# -- one run -----------------------------------------------------------------------------------
def evaluate(loss_fn: Callable[[], torch.Tensor]) -> float:
    with torch.no_grad():
        return float(loss_fn().detach().float())


def run_one(problem: str, method: str, settings: Dict[str, Any], seed: int, budget: int,
            record_every: int, problem_seed: int) -> Dict[str, Any]:
    """Run one optimizer until ``opt.forwards >= budget``; the loss curve and summary."""
    model, loss_fn = PROBLEMS[problem](problem_seed)
    opt = METHODS[method](model, seed=seed, **settings)
    curve: List[Tuple[int, int, float]] = [(0, 0, evaluate(loss_fn))]  # (step, forwards, loss)
    next_record, diverged = record_every, None
    t0 = time.perf_counter()
    while opt.forwards < budget:
        try:
            opt.step(loss_fn)
        except pgap.NonFiniteLossError as exc:
            diverged = str(exc)
            break
        if opt.forwards >= next_record or opt.forwards >= budget:
            loss = evaluate(loss_fn)
            curve.append((opt.steps_done, opt.forwards, loss))
            while next_record <= opt.forwards:
                next_record += record_every
            if not math.isfinite(loss):
                diverged = f"loss {loss} at {opt.forwards} forwards"
                break
    if diverged is not None:  # the rest of the budget is lost: record it as infinite loss
        curve.append((opt.steps_done, max(opt.forwards, budget), float("inf")))
    return {"curve": curve, "final": curve[-1][2], "forwards": curve[-1][1],
            "fwd_per_step": opt.forwards_per_step(), "diverged": diverged,
            "seconds": time.perf_counter() - t0}


# -- the benchmark -----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """Per problem: {"budget", "initial", "methods": {method: {"settings", "tuned", "runs",
    "tune"}}}."""
    from tqdm import tqdm  # noqa: PLC0415 - after common.require's check

    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    jobs = []
    for problem in args.problems:
        budget = args.budget or budgets[problem]
        for method in args.methods:
            grid = TUNE_GRID[problem][method] if args.tune else []
            jobs += [(problem, method, "tune", g) for g in grid]
            jobs += [(problem, method, "run", None)]
    total = sum(len(TUNE_GRID[p][m]) if args.tune else 0 for p in args.problems for m in args.methods)
    total += len(args.problems) * len(args.methods) * args.seeds
    out: Dict[str, Dict[str, Any]] = {}
    bar = tqdm(total=total, desc="bench_methods", unit="run", disable=args.no_progress)
    for problem in args.problems:
        budget = args.budget or budgets[problem]
        record_every = args.record_every or max(1, budget // 50)
        model, loss_fn = PROBLEMS[problem](args.problem_seed)
        res = out[problem] = {"budget": budget, "initial": evaluate(loss_fn),
                              "params": sum(p.numel() for p in model.parameters()), "methods": {}}
        for method in args.methods:
            bar.set_postfix_str(f"{problem} {method}")
            tune_runs: List[Tuple[Dict[str, Any], Dict[str, Any]]] = []
            chosen = settings_for(problem, method)
            if args.tune:
                for override in TUNE_GRID[problem][method]:
                    s = settings_for(problem, method, override)
                    tune_runs.append((s, run_one(problem, method, s, 0, budget, record_every,
                                                 args.problem_seed)))
                    bar.update()
                finite = [(r["final"], i) for i, (_, r) in enumerate(tune_runs)
                          if math.isfinite(r["final"])]
                if finite:
                    chosen = tune_runs[min(finite)[1]][0]
            runs = []
            for seed in range(args.seeds):
                cached = next((r for s, r in tune_runs if s == chosen), None) if seed == 0 else None
                runs.append(cached or run_one(problem, method, chosen, seed, budget, record_every,
                                              args.problem_seed))
                bar.update()
            res["methods"][method] = {"settings": chosen, "tuned": bool(args.tune), "runs": runs,
                                      "tune": tune_runs}
    bar.close()
    return out


# -- summaries ---------------------------------------------------------------------------------
def finals(entry: Dict[str, Any]) -> List[float]:
    return [r["final"] for r in entry["runs"]]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    if not all(math.isfinite(v) for v in values):
        return float("inf"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_curve(entry: Dict[str, Any]) -> Tuple[List[float], List[float], List[float], List[float]]:
    """(forwards, mean, min, max) over seeds on the first seed's forwards grid (the others are
    interpolated linearly in forwards, constant past their last point)."""
    import numpy as np  # noqa: PLC0415

    grid = np.array([c[1] for c in entry["runs"][0]["curve"]], dtype=float)
    ys = []
    for r in entry["runs"]:
        xs = np.array([c[1] for c in r["curve"]], dtype=float)
        vals = np.array([c[2] for c in r["curve"]], dtype=float)
        vals = np.where(np.isfinite(vals), vals, np.inf)
        ys.append(np.interp(grid, xs, vals))
    ys = np.array(ys)
    with np.errstate(invalid="ignore"):
        return grid.tolist(), ys.mean(0).tolist(), ys.min(0).tolist(), ys.max(0).tolist()


def forwards_to_reach(entry: Dict[str, Any], target: float) -> Optional[float]:
    """First recorded forwards at which the mean-over-seeds loss is <= target (None: never)."""
    xs, mean, _, _ = mean_curve(entry)
    return next((x for x, y in zip(xs, mean) if y <= target), None)


def format_table(problem: str, res: Dict[str, Any]) -> str:
    methods = res["methods"]
    seeds = len(next(iter(methods.values()))["runs"])
    base = mean_std(finals(methods[BASELINE]))[0] if BASELINE in methods else float("nan")
    lines = [f"\n== {problem}: {res['params']:,} parameters, initial loss {res['initial']:.4g}, "
             f"budget {res['budget']} forwards, {seeds} seed(s)"
             + (" [settings tuned on seed 0]" if any(m["tuned"] for m in methods.values()) else "")]
    lines.append(f"{'method':<12} {'settings':<46} {'fwd/step':>8} {'forwards':>8} "
                 f"{'final loss (mean ± std)':>24} {'min':>9} {'max':>9} {'vs MeZO':>8}")
    for name, entry in methods.items():
        f = finals(entry)
        mean, std = mean_std(f)
        fps = statistics.fmean(r["fwd_per_step"] for r in entry["runs"])
        fwd = max(r["forwards"] for r in entry["runs"])
        ratio = mean / base if math.isfinite(mean) and base > 0 else float("nan")
        final = f"{mean:.4g} ± {std:.2g}" if math.isfinite(mean) else "diverged"
        lines.append(f"{name:<12} {describe(entry['settings']):<46} {fps:>8.2f} {fwd:>8d} "
                     f"{final:>24} {min(f):>9.4g} {max(f):>9.4g} {ratio:>7.3f}x")
        for seed, r in enumerate(entry["runs"]):
            peak = max(c[2] for c in r["curve"])
            if r["diverged"]:
                lines.append(f"    {name} seed {seed} diverged: {r['diverged']}")
            elif peak > UNSTABLE * res["initial"]:
                lines.append(f"    {name} seed {seed} was unstable: its loss reached {peak:.4g} "
                             f"(> {UNSTABLE}x the initial {res['initial']:.4g}) before ending at "
                             f"{r['final']:.4g}")
        for s, r in entry["tune"]:
            lines.append(f"    tune {name:<12} {describe(s):<46} seed-0 final "
                         f"{r['final']:.4g}" + ("  <- chosen" if s == entry["settings"] else ""))
    return "\n".join(lines)


def verdict(problem: str, res: Dict[str, Any]) -> List[str]:
    """Which methods end below MeZO at equal forwards, by how much, computed from the runs."""
    methods = res["methods"]
    if BASELINE not in methods:
        return [f"verdict {problem}: no {BASELINE} baseline run"]
    base_f = finals(methods[BASELINE])
    base, _ = mean_std(base_f)
    out = [f"verdict {problem} ({BASELINE} final loss {base:.4g} after {res['budget']} forwards; "
           f"initial {res['initial']:.4g}):"]
    better, worse = [], []
    for name, entry in methods.items():
        if name == BASELINE:
            continue
        f = finals(entry)
        mean, _ = mean_std(f)
        if not math.isfinite(mean):
            worse.append(f"  {name}: diverged on at least one seed")
            continue
        ratio = mean / base
        gain = (res["initial"] - mean) / (res["initial"] - base) if res["initial"] != base else float("nan")
        if mean < base:
            every = max(f) < min(base_f)
            reach = forwards_to_reach(entry, base)
            reach_s = (f"; reaches MeZO's final loss at {reach:.0f} forwards "
                       f"({res['budget'] / reach:.2f}x fewer)" if reach else "")
            better.append(f"  {name} beats {BASELINE}: final {mean:.4g} vs {base:.4g} "
                          f"({100 * (1 - ratio):.1f}% lower, ratio {ratio:.3f}; loss drop "
                          f"{gain:.2f}x MeZO's) "
                          + ("on every seed (min-max bands do not overlap)" if every else
                             "on average only (the seeds' min-max ranges overlap)") + reach_s)
        else:
            worse.append(f"  {name} does not beat {BASELINE}: final {mean:.4g} vs {base:.4g} "
                         f"({100 * (ratio - 1):.1f}% higher, ratio {ratio:.3f}; loss drop "
                         f"{gain:.2f}x MeZO's)")
    if not better:
        out.append(f"  no method beats {BASELINE} at equal forwards")
    return out + better + worse


def csv_rows(results: Dict[str, Dict[str, Any]]) -> List[dict]:
    rows = []
    for problem, res in results.items():
        for method, entry in res["methods"].items():
            for seed, r in enumerate(entry["runs"]):
                for step, fwd, loss in r["curve"]:
                    rows.append({"problem": problem, "method": method, "seed": seed,
                                 "settings": describe(entry["settings"]), "tuned": int(entry["tuned"]),
                                 "budget": res["budget"], "step": step, "forwards": fwd,
                                 "loss": f"{loss:.6g}"})
    return rows


def plot(path: Path, results: Dict[str, Dict[str, Any]], meta: Dict[str, str]) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    problems = list(results)
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.8), squeeze=False)
    colors = {"MeZO": "black", "P-GAP": "tab:red", "MeZO-GV": "tab:blue",
              "MeZO-Greedy": "tab:green", "LDSD": "tab:purple"}
    for ax, problem in zip(axes[0], problems):
        res = results[problem]
        for name, entry in res["methods"].items():
            xs, mean, lo, hi = mean_curve(entry)
            c = colors.get(name)
            ax.plot(xs, mean, color=c, label=f"{name} ({describe(entry['settings'])})")
            ax.fill_between(xs, lo, hi, color=c, alpha=0.15, linewidth=0)
        if LOG_Y.get(problem):
            ax.set_yscale("log")
        seeds = len(next(iter(res["methods"].values()))["runs"])
        ax.set_title(f"{problem} ({res['params']:,} params), mean of {seeds} seed(s), band min-max",
                     fontsize=9)
        ax.set_xlabel("forward passes")
        ax.set_ylabel("loss (no_grad, outside the optimizer)")
        ax.legend(fontsize=6.5)
        ax.grid(alpha=0.3)
    fig.suptitle(f"pgap ZO methods at equal forwards (torch {meta['torch']}, rev {meta['git_rev']}, "
                 f"{meta['timestamp']})", fontsize=9)
    common.save_figure(fig, path)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--budget", type=int, default=None,
                   help="forward budget for every problem (default: " +
                   ", ".join(f"{k} {v}" for k, v in BUDGETS.items()) + ")")
    p.add_argument("--seeds", type=int, default=None,
                   help="optimizer seeds 0..N-1 (default 3; 1 with --quick)")
    p.add_argument("--problem-seed", type=int, default=0, help="seed of the data and initial weights")
    p.add_argument("--record-every", type=int, default=None,
                   help="forwards between recorded losses (default budget // 50)")
    p.add_argument("--tune", action="store_true",
                   help="pick each method's setting from TUNE_GRID on seed 0 (best final loss)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets (" + ", ".join(f"{k} {v}" for k, v in QUICK_BUDGETS.items())
                   + "), 1 seed: a smoke run")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "methods.csv")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--plot", type=Path, default=common.RESULTS_DIR / "methods.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1 or (args.budget is not None and args.budget < 1):
        p.error("--seeds and --budget must be >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    common.require("bench/experiments/methods.py", ("tqdm", "transformers") if "tiny-lm" in args.problems else ("tqdm",),
                   plot=not args.no_plot)
    torch.set_num_threads(args.threads)
    meta = common.run_metadata()
    print(f"pgap {pgap.__version__} rev {meta['git_rev']} | torch {meta['torch']} | "
          f"{meta['cpu_model']} x{meta['cpu_count']} ({meta['torch_threads']} threads)")
    t0 = time.perf_counter()
    results = run(args)
    for problem, res in results.items():
        print(format_table(problem, res))
    print()
    for problem, res in results.items():
        print("\n".join(verdict(problem, res)))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    common.write_outputs(args, meta, FIELDS, csv_rows(results), args.plot,
                         lambda path: plot(path, results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
