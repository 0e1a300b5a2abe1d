"""ZO in bf16: what in-place perturbation does to 16-bit weights, and what the functional (no-write)
mode with stochastic rounding keeps (issue 14). Four parts, each printing its numbers and a
PASS/FAIL line per target; rows go to bench/results/bf16.csv.

* ``drift``: the embedded SmolLM2-135M in bf16, ``--drift-steps`` MeZO steps at lr = 0 on one
  small batch. Functional (the bf16 default) must leave every weight bitwise unchanged; in place is
  reported beside it (relative drift ‖θ_T − θ_0‖/‖θ_0‖ and the share of weights changed).
* ``subulp``: bf16 weights (256 × 576, N(0, 0.02²)) and a loss linear in them, L = C·θ. Each step
  is MeZO's update pass θ ← θ − lr·g·z with the exact projected gradient g = C·z (a two-point
  estimate of a linear loss is exact), lr set so that the median update is ``--ulp-fraction`` of
  an ulp. After ``--subulp-steps`` steps the loss must fall as far as in float32 within
  [0.75, 1.33]; round to nearest is reported beside it.
* ``cosine``: the random-direction experiment: 200 updates of lr·g = 1e-5 along stream Gaussians
  on a 256 × 576 N(0, 0.02²) bf16 matrix; cosine and magnitude ratio of what the weights moved
  against the intended (float64) update, for in place (three passes per step, ε = 1e-3, round to
  nearest), functional with round to nearest, and functional with stochastic rounding, beside
  the cosine stochastic rounding's own noise predicts: sqrt(S/(S+N)), S = Σ intended², N = an upper estimate of the
  expected rounding variance Σ_t Σ_i |Δ_ti|·ulp_i (each sub-ulp step of size Δ rounds with
  variance ≈ |Δ|·ulp).
* ``time``: SmolLM2-135M, batch 8 of Rotten Tomatoes, MeZO step time functional / in place in
  float32 and bf16 (interleaved repetitions, median; target ≤ 1.15×), and the views' peak bytes of
  copies alive at once (arena and kept tied copy) against the largest parameter (target ≤ 1×).

    python -m bench.experiments.bf16                       # all parts
    python -m bench.experiments.bf16 --parts subulp cosine # the fast ones (no model)
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from bench import common

import pgap
import pgap_kernels as pk

FIELDS = ["part", "setting", "metric", "value"]
DEFAULT_CSV = common.RESULTS_DIR / "bf16.csv"
PARTS = ("drift", "subulp", "cosine", "time")
MODEL_PARTS = ("drift", "time")


def ulp_bf16(w: torch.Tensor) -> torch.Tensor:
    """The bf16 spacing at each |w| (float32): 2^(max(E, −126) − 7)."""
    a = w.float().abs().clamp_min(2.0 ** -126)
    return torch.exp2(torch.floor(torch.log2(a)) - 7)


def stream(seed: int, shape, key: int = 7) -> torch.Tensor:
    return pk.gaussian(shape, seed, key=key)


# -- parts without the model ----------------------------------------------------------------
def part_subulp(args, out: List[dict], targets: List[str]) -> None:
    g0 = torch.Generator().manual_seed(args.seed)
    shape = (256, 576)
    theta0 = (0.02 * torch.randn(shape, generator=g0)).bfloat16()
    C = torch.randn(shape, generator=g0)
    seeds = [pgap.derive_seed(args.seed, t) for t in range(args.subulp_steps)]
    # lr so that the median |lr·g·z_i| is ulp_fraction of the median ulp (|g| ~ ‖C‖, |z| ~ 0.67)
    lr = args.ulp_fraction * float(ulp_bf16(theta0).median()) / (float(C.norm()) * 0.6745)

    def loss(w: torch.Tensor) -> float:
        return float((C.double() * w.double()).sum())

    def run(dtype: torch.dtype, rounding: str) -> float:
        w = theta0.to(dtype).clone()
        for t, s in enumerate(seeds):
            g = float((C * stream(s, shape)).sum())
            extra = {"rounding": rounding, "rounding_seed": pgap.derive_seed(args.seed, t, 99)}
            pk.perturb_(w, [s], [-lr * g], keys=[7], **extra)
        return loss(theta0) - loss(w)

    fp32 = run(torch.float32, "nearest")
    sr = run(torch.bfloat16, "stochastic")
    rn = run(torch.bfloat16, "nearest")
    expected = lr * float(C.norm()) ** 2 * args.subulp_steps
    print(f"\nsubulp: {args.subulp_steps} steps, update {args.ulp_fraction} ulp (median), lr {lr:.3g}")
    print(f"  loss decrease float32 {fp32:.4g} (expected lr·‖C‖²·T = {expected:.4g})")
    for name, v in (("bf16 stochastic", sr), ("bf16 nearest", rn)):
        print(f"  loss decrease {name:<16} {v:.4g}  ratio to float32 {v / fp32:.3f}")
        out.append(dict(part="subulp", setting=name, metric="decrease_ratio", value=round(v / fp32, 4)))
    out.append(dict(part="subulp", setting="float32", metric="decrease", value=round(fp32, 6)))
    ok = 0.75 <= sr / fp32 <= 1.33
    targets.append(f"{'PASS' if ok else 'FAIL'} subulp: bf16 stochastic rounding keeps "
                   f"{sr / fp32:.2f} of float32's loss decrease (target [0.75, 1.33]); "
                   f"round to nearest keeps {rn / fp32:.2f}")


def part_cosine(args, out: List[dict], targets: List[str]) -> None:
    g0 = torch.Generator().manual_seed(args.seed + 1)
    shape = (256, 576)
    theta0 = (0.02 * torch.randn(shape, generator=g0)).bfloat16()
    step, eps, T = 1e-5, 1e-3, args.cosine_steps
    seeds = [pgap.derive_seed(args.seed + 1, t) for t in range(T)]
    intended = torch.zeros(shape, dtype=torch.float64)
    for s in seeds:
        intended -= step * stream(s, shape).double()

    def moved(mode: str) -> torch.Tensor:
        w = theta0.clone()
        for t, s in enumerate(seeds):
            if mode == "inplace":  # MeZO's three passes: +ε, −2ε, restore + update
                pk.perturb_(w, [s], [eps], keys=[7])
                pk.perturb_(w, [s], [-2 * eps], keys=[7])
                pk.perturb_(w, [s], [eps - step], keys=[7])
            else:
                rounding = "stochastic" if mode == "functional, stochastic" else "nearest"
                pk.perturb_(w, [s], [-step], keys=[7], rounding=rounding,
                            rounding_seed=pgap.derive_seed(args.seed, t, 99))
        return w.double() - theta0.double()

    ulp = ulp_bf16(theta0).double()
    S = float(intended.square().sum())
    N = sum(float((step * stream(s, shape).double().abs() * ulp).sum()) for s in seeds)
    bound = math.sqrt(S / (S + N))  # N overestimates the rounding variance: a lower estimate
    print(f"\ncosine: {T} updates of {step:g}·z on 256x576 bf16 N(0, 0.02^2); stochastic rounding's "
          f"noise predicts cos ≈ {bound:.3f} (from above on the noise: a lower estimate)")
    results = {}
    for mode in ("inplace", "functional, nearest", "functional, stochastic"):
        d = moved(mode)
        cos = float((d * intended).sum() / (d.norm() * intended.norm()).clamp_min(1e-300))
        ratio = float(d.norm() / intended.norm())
        changed = float((d != 0).double().mean())
        results[mode] = cos
        print(f"  {mode:<24} cosine {cos:.3f}  magnitude ratio {ratio:.2f}  weights changed {changed:.1%}")
        out += [dict(part="cosine", setting=mode, metric="cosine", value=round(cos, 4)),
                dict(part="cosine", setting=mode, metric="magnitude_ratio", value=round(ratio, 4))]
    out.append(dict(part="cosine", setting="stochastic prediction", metric="cosine", value=round(bound, 4)))
    ok = results["functional, stochastic"] >= 0.9 * bound
    targets.append(f"{'PASS' if ok else 'FAIL'} cosine: functional + stochastic rounding "
                   f"{results['functional, stochastic']:.3f} (predicted {bound:.3f}; in place "
                   f"{results['inplace']:.3f}); target ≥ 0.9 × predicted")


# -- parts with the model -------------------------------------------------------------------
def load(args, dtype: torch.dtype):
    from pgap.finetune.data import load_rotten_tomatoes  # noqa: PLC0415
    from pgap.finetune.models import load_causal_lm  # noqa: PLC0415
    from pgap.finetune.prompts import PromptClassifier  # noqa: PLC0415

    tok, model = load_causal_lm(None, dtype)
    task = load_rotten_tomatoes(n_train=64, n_dev=8, n_test=8, seed=args.seed)
    clf = PromptClassifier(tok, task.template, task.label_words)
    return model, clf, task


def weights(model) -> Dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def part_drift(args, out: List[dict], targets: List[str]) -> None:
    model, clf, task = load(args, torch.bfloat16)
    batch = clf.encode(task.train[:args.drift_batch])
    theta0 = weights(model)
    norm0 = math.sqrt(sum(float(v.double().square().sum()) for v in theta0.values()))
    total = sum(v.numel() for v in theta0.values())
    print(f"\ndrift: SmolLM2-135M bf16, {args.drift_steps} MeZO steps at lr = 0, batch {args.drift_batch}")
    verdict = {}
    for mode in ("functional", "inplace"):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(theta0[n])
        opt = pgap.MeZO(model, lr=0.0, eps=1e-3, seed=args.seed, mode=mode)
        t0 = time.perf_counter()
        for _ in range(args.drift_steps):
            opt.step(lambda: clf.loss(model, batch))
        opt.close()
        now = weights(model)
        diff = math.sqrt(sum(float((now[n].double() - theta0[n].double()).square().sum()) for n in now))
        changed = sum(int((now[n] != theta0[n]).sum()) for n in now)
        verdict[mode] = changed
        print(f"  {mode:<10} weights changed {changed}/{total} ({changed / total:.1%}), relative drift "
              f"{diff / norm0:.2%}  ({time.perf_counter() - t0:.0f} s)")
        out += [dict(part="drift", setting=mode, metric="changed_fraction", value=round(changed / total, 6)),
                dict(part="drift", setting=mode, metric="relative_drift", value=round(diff / norm0, 6))]
    targets.append(f"{'PASS' if verdict['functional'] == 0 else 'FAIL'} drift: bf16 SmolLM2, "
                   f"{args.drift_steps} MeZO steps at lr = 0 (functional, the default): "
                   f"{verdict['functional']} weights changed (target 0; in place: {verdict['inplace']})")


def part_time(args, out: List[dict], targets: List[str]) -> None:
    print(f"\ntime: SmolLM2-135M, batch {args.batch}, MeZO step, {args.reps} interleaved repetitions")
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, clf, task = load(args, dtype)
        batch = clf.encode(task.train[:args.batch])
        # two optimizers on one model: the functional one's hooks do nothing while it shows nothing
        opts = {mode: pgap.MeZO(model, lr=1e-7, eps=1e-3, seed=args.seed, mode=mode)
                for mode in ("inplace", "functional")}
        views = opts["functional"].views
        times: Dict[str, List[float]] = {"inplace": [], "functional": []}
        for rep in range(args.reps + 1):
            for mode in ("inplace", "functional"):
                t0 = time.perf_counter()
                opts[mode].step(lambda: clf.loss(model, batch))
                if rep:  # the first repetition warms up
                    times[mode].append(time.perf_counter() - t0)
        ratio = statistics.median(times["functional"]) / statistics.median(times["inplace"])
        largest = max(p.numel() * p.element_size() for p in model.parameters())
        peak = views.peak_bytes
        for opt in opts.values():
            opt.close()
        print(f"  {dtype_name}: in place {statistics.median(times['inplace']):.3f} s, functional "
              f"{statistics.median(times['functional']):.3f} s, ratio {ratio:.3f}; copies alive at once "
              f"{peak / 2**20:.1f} MiB, largest parameter {largest / 2**20:.1f} MiB")
        out += [dict(part="time", setting=dtype_name, metric="functional_over_inplace", value=round(ratio, 4)),
                dict(part="time", setting=dtype_name, metric="peak_copy_over_largest_param",
                     value=round(peak / largest, 4))]
        targets.append(f"{'PASS' if ratio <= 1.15 else 'FAIL'} time {dtype_name}: functional / in place "
                       f"step time {ratio:.2f}x (target ≤ 1.15x)")
        targets.append(f"{'PASS' if peak <= largest else 'FAIL'} memory {dtype_name}: copies alive at "
                       f"once {peak / largest:.2f}x the largest parameter (target ≤ 1x)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drift-steps", type=int, default=300)
    p.add_argument("--drift-batch", type=int, default=2)
    p.add_argument("--subulp-steps", type=int, default=1000)
    p.add_argument("--ulp-fraction", type=float, default=0.2)
    p.add_argument("--cosine-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    if any(part in MODEL_PARTS for part in args.parts):
        from pgap.finetune.data import task_needs  # noqa: PLC0415
        from pgap.finetune.models import model_needs  # noqa: PLC0415
        common.require("bench/experiments/bf16.py", ("transformers",),
                       needs=model_needs(None) + task_needs("rotten_tomatoes"))
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = common.run_metadata()
    print(f"bench_bf16: rev {meta['git_rev']}, torch {meta['torch']}, {meta['cpu_model']} "
          f"({meta['torch_threads']} threads)")
    out: List[dict] = []
    targets: List[str] = []
    runners: Dict[str, Callable] = {"drift": part_drift, "subulp": part_subulp, "cosine": part_cosine,
                                    "time": part_time}
    for part in args.parts:
        runners[part](args, out, targets)
    if not args.no_csv:
        common.append_csv(args.csv, list(meta) + FIELDS, [{**meta, **r} for r in out])
        print(f"\nCSV rows appended to {args.csv}")
    common.print_targets(targets)
    return 1 if any(t.startswith("FAIL") for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
