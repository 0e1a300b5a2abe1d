"""Accuracy against forward passes for several pgap-finetune runs in one plot.

    python -m bench.experiments.plot_finetune runs/demo-pgap runs/demo-mezo -o bench/results/finetune_rt.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import common

from pgap.finetune.outputs import plot_accuracy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="pgap-finetune output directories")
    p.add_argument("-o", "--output", type=Path, default=common.RESULTS_DIR / "finetune_rt.png")
    args = p.parse_args()
    common.require("bench/experiments/plot_finetune.py", ("matplotlib",))
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for run in args.runs:
        summary = json.loads((run / "summary.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        plot_accuracy(ax, rows, f"{summary['method']} lr {summary['lr']:g}")
        print(f"{run}: {summary['method']} lr {summary['lr']:g}: zero-shot "
              f"{summary['zero_shot_test_accuracy']} -> {summary['test_accuracy']:.3f} after "
              f"{summary['steps']} steps, {summary['forwards']} forwards, {summary['train_seconds']:.0f} s")
    ax.set_xlabel("training forward passes")
    ax.set_ylabel("accuracy")
    ax.set_title("pgap-finetune, SmolLM2-135M on Rotten Tomatoes (CPU)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    common.save_figure(fig, args.output)
    print(f"plot written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
