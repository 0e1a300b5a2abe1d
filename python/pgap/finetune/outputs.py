"""What a pgap-finetune run writes: metrics.jsonl (:class:`MetricsLog`), loss.png and
accuracy.png (:func:`plot_metrics`), checkpoint/ (:func:`save_checkpoint`) and model/
(:func:`save_model`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..checkpoint import save_optimizer
from .sharding import full_state_dict
from .train import Ranks


class MetricsLog:
    """Append-only metrics.jsonl (flushed each line); on resume, rows after the step dropped.
    With ``write=False`` (ranks other than 0) rows are only kept in memory."""

    def __init__(self, path: Path, resume_step: Optional[int], write: bool = True) -> None:
        self.path, self.write = path, write
        rows = []
        if resume_step is not None and path.exists():
            rows = [r for r in map(json.loads, path.read_text().splitlines())
                    if r.get("step", 0) <= resume_step]
        self.rows: List[Dict[str, Any]] = rows
        if write:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def add(self, **row: Any) -> None:
        self.rows.append(row)
        if self.write:
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


def plot_metrics(rows: List[Dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    steps = [r for r in rows if r["kind"] == "step"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.5, label="step loss")
    if len(steps) >= 10:
        k = max(1, len(steps) // 20)
        smooth = [sum(r["loss"] for r in steps[max(0, i - k):i + 1]) / len(steps[max(0, i - k):i + 1])
                  for i in range(len(steps))]
        ax.plot([r["step"] for r in steps], smooth, lw=1.5, label=f"running mean ({k + 1})")
    _finish(plt, fig, ax, "step", "(L+ + L−)/2", title, out / "loss.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_accuracy(ax, rows)
    _finish(plt, fig, ax, "forward passes (training)", "accuracy", title, out / "accuracy.png")


def plot_accuracy(ax, rows: List[Dict[str, Any]], label: str = "") -> None:
    """Dev and test accuracy of one run's metrics rows against training forward passes."""
    for split, style in (("test", "o-"), ("dev", "s--")):
        pts = [r for r in rows if r["kind"] == "eval" and r["split"] == split]
        if pts:
            ax.plot([r["forwards"] for r in pts], [r["accuracy"] for r in pts], style,
                    label=f"{label} ({split})" if label else split)


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def optimizer_file(ckpt: Path, args: argparse.Namespace, ranks: Ranks) -> Path:
    """optimizer.safetensors, or one file per rank with --fsdp (each holds its shards' state)."""
    return ckpt / (f"optimizer-rank{ranks.rank}.safetensors" if args.fsdp else "optimizer.safetensors")


def save_model(model, tokenizer, path: Path, args: argparse.Namespace, ranks: Ranks) -> None:
    """The full model (or the LoRA adapters) and tokenizer in ``path``, written by rank 0; with
    --fsdp every rank takes part in gathering the shards first. Outside ``opt.unmerged()`` the
    model's ``state_dict()`` merges pending side-path updates into the weights first (model/:
    the trained weights)."""
    state = full_state_dict(model) if args.fsdp else None
    if ranks.main:
        model.save_pretrained(path, state_dict=state)
        tokenizer.save_pretrained(path)


def save_checkpoint(out: Path, model, tokenizer, opt, step: int, args: argparse.Namespace,
                    ranks: Ranks) -> None:
    """checkpoint/: model/ (the full model, or only the adapters with LoRA), the optimizer state
    and the step, taken inside ``opt.unmerged()``: the weights without P-GAP's/AGZO's pending
    side-path updates, which the optimizer state carries, so saving leaves the run's trajectory
    as it was and ``--resume`` continues it bit for bit. Mutates nothing."""
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    with opt.unmerged():
        save_model(model, tokenizer, ckpt / "model", args, ranks)
        if args.fsdp or ranks.main:
            save_optimizer(opt, optimizer_file(ckpt, args, ranks))
    if ranks.main:
        (ckpt / "state.json").write_text(json.dumps({"step": step, "lora": args.lora,
                                                     "fsdp": args.fsdp, "ranks": ranks.world}))
    ranks.barrier()
