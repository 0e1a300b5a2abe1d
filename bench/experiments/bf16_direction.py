"""Which direction does a bf16 two-point step measure? (a finding of issue 23's paired forwards)

In bf16 functional mode the forwards see round(θ + ε·z) and round(θ − ε·z), so the finite
difference measures the loss along z_eff = (round(θ + ε·z) − round(θ − ε·z)) / (2ε), while the
update moves θ along z. Where ε·|z| is below half an ulp of θ, both copies are θ: that element is
not perturbed at all, yet it is updated. For the embedded SmolLM2-135M's weights and one seeded z
per ``--eps``, per parameter group (embedding, matrices, norm weights): the fraction of elements
not perturbed (round(θ + ε·z) = round(θ − ε·z)) and ‖z_eff − z‖ / ‖z‖. Rows go to
bench/results/bf16_direction.csv.

``--gradients N``: what that does to the estimate. On N training batches (pgap-finetune's, batch
8), MeZO's projected gradient g = (L+ − L−)/2ε at the same weights and the same z (lr 0, one
seed), in float32 at ε = 1e-3 (the reference) and in bf16 at each ``--eps``; prints the
correlation of each bf16 series with the float32 one and the RMS of the difference relative to
the float32 RMS (rows to bench/results/bf16_gradients.csv).

    python -m bench.experiments.bf16_direction --eps 1e-3 1e-2
    python -m bench.experiments.bf16_direction --eps 1e-3 1e-2 --gradients 30
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List

import torch

from bench.common import RESULTS_DIR, append_csv, require, run_metadata

FIELDS = ["eps", "group", "elements", "unperturbed", "relative_direction_error", "seed", "git_rev",
          "timestamp"]


def group_of(name: str) -> str:
    return "norm" if "norm" in name else ("embedding" if "embed" in name else "matrices")


def measure(model: torch.nn.Module, eps: float, seed: int) -> Dict[str, List[float]]:
    """Per group: [elements, unperturbed elements, ‖z_eff − z‖², ‖z‖²]."""
    import pgap_kernels as pk  # noqa: PLC0415
    from pgap.params import collect_trainable  # noqa: PLC0415

    out: Dict[str, List[float]] = {}
    for t in collect_trainable(model, None):
        theta = t.param.detach()
        z = pk.gaussian(tuple(theta.shape), seed, key=t.key, offset=t.offset)
        plus = pk.perturbed(theta, seed, eps, key=t.key, offset=t.offset).float()
        minus = pk.perturbed(theta, seed, -eps, key=t.key, offset=t.offset).float()
        z_eff = (plus - minus) / (2 * eps)
        acc = out.setdefault(group_of(t.name), [0, 0, 0.0, 0.0])
        acc[0] += theta.numel()
        acc[1] += int((plus == minus).sum())
        acc[2] += float(((z_eff - z) ** 2).sum())
        acc[3] += float((z ** 2).sum())
    return out


def gradients(args, meta: Dict[str, str]) -> None:
    """The ``--gradients`` comparison (see the module docstring)."""
    import copy  # noqa: PLC0415

    from bench.experiments.paired_agreement import agreement  # noqa: PLC0415
    from pgap.finetune.data import load_rotten_tomatoes  # noqa: PLC0415
    from pgap.finetune.models import load_causal_lm  # noqa: PLC0415
    from pgap.finetune.prompts import PromptClassifier  # noqa: PLC0415
    from pgap.finetune.train import Ranks, train_step  # noqa: PLC0415
    from pgap.methods import build_optimizer  # noqa: PLC0415

    tokenizer, fp32 = load_causal_lm(None, torch.float32)
    for prm in fp32.parameters():
        prm.requires_grad_(True)
    task = load_rotten_tomatoes(n_train=1000, n_dev=0, n_test=0, seed=args.seed)
    clf = PromptClassifier(tokenizer, task.template, task.label_words)
    runs = {"fp32 eps 0.001": (fp32, 1e-3)}
    runs.update({f"bf16 eps {eps:g}": (copy.deepcopy(fp32).to(torch.bfloat16), eps) for eps in args.eps})
    opts = {name: build_optimizer("mezo", model, lr=0.0, eps=eps, seed=args.seed)
            for name, (model, eps) in runs.items()}
    gs: Dict[str, List[float]] = {name: [] for name in runs}
    ranks = Ranks()
    for step in range(args.gradients):
        for name, opt in opts.items():
            train_step(opt, runs[name][0], clf, task.train, step, 8, args.seed, ranks)
            gs[name].append(opt.diagnostics()["projected_grad"])
        append_csv(args.csv.with_name("bf16_gradients.csv"), ["step", "run", "g", "seed", "git_rev", "timestamp"],
                   [{"step": step + 1, "run": name, "g": gs[name][-1], "seed": args.seed,
                     "git_rev": meta["git_rev"], "timestamp": meta["timestamp"]} for name in runs])
    ref = gs["fp32 eps 0.001"]
    for name in runs:
        if name != "fp32 eps 0.001":
            a = agreement(ref, gs[name])
            print(f"{name} against fp32 eps 0.001 over {args.gradients} batches: correlation "
                  f"{a['correlation']:.4f}, RMS difference / RMS g {a['relative_rms_difference']:.4f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, nargs="+", default=[1e-3, 1e-2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", type=Path, default=RESULTS_DIR / "bf16_direction.csv")
    p.add_argument("--gradients", type=int, default=0, help="compare g on this many batches (0: no)")
    args = p.parse_args(argv)
    require("bench/experiments/bf16_direction.py", ("transformers",))
    torch.set_num_threads(args.threads)
    from pgap.finetune.models import load_causal_lm  # noqa: PLC0415

    _, model = load_causal_lm(None, torch.bfloat16)
    for prm in model.parameters():
        prm.requires_grad_(True)
    meta = run_metadata()
    if args.gradients:
        gradients(args, meta)
        return 0
    for eps in args.eps:
        rows = []
        for group, (n, same, diff, norm) in sorted(measure(model, eps, args.seed).items()):
            rows.append({"eps": eps, "group": group, "elements": n, "unperturbed": round(same / n, 4),
                         "relative_direction_error": round(math.sqrt(diff / norm), 4), "seed": args.seed,
                         "git_rev": meta["git_rev"], "timestamp": meta["timestamp"]})
            print(f"eps {eps:g}  {group:<10} {n:>11,} elements  not perturbed {same / n:6.1%}  "
                  f"|z_eff - z| / |z| {math.sqrt(diff / norm):.3f}", flush=True)
        append_csv(args.csv, FIELDS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
