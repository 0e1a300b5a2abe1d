"""Which direction does a bf16 two-point step measure? (a finding of issue 23's paired forwards)

In bf16 functional mode the forwards see round(θ + ε·z) and round(θ − ε·z), so the finite
difference measures the loss along z_eff = (round(θ + ε·z) − round(θ − ε·z)) / (2ε), while the
update moves θ along z. Where ε·|z| is below half an ulp of θ, both copies are θ: that element is
not perturbed at all, yet it is updated. For the embedded SmolLM2-135M's weights and one seeded z
per ``--eps``, per parameter group (embedding, matrices, norm weights): the fraction of elements
not perturbed (round(θ + ε·z) = round(θ − ε·z)) and ‖z_eff − z‖ / ‖z‖. Rows go to
bench/results/bf16_direction.csv.

    python -m bench.experiments.bf16_direction --eps 1e-3 1e-2
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, nargs="+", default=[1e-3, 1e-2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", type=Path, default=RESULTS_DIR / "bf16_direction.csv")
    args = p.parse_args(argv)
    require("bench/experiments/bf16_direction.py", ("transformers",))
    torch.set_num_threads(args.threads)
    from pgap.finetune.models import load_causal_lm  # noqa: PLC0415

    _, model = load_causal_lm(None, torch.bfloat16)
    for prm in model.parameters():
        prm.requires_grad_(True)
    meta = run_metadata()
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
