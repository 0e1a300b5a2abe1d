"""pgap.hf.ZOTrainer as a drop-in transformers.Trainer, on a tiny config-built Llama.

The model memorises one fixed batch (examples/tiny_model.py); the script prints the loss on it
before and after, the logged projected gradient, and the last step's diagnostics::

    python examples/zotrainer.py

The ZOTrainer lines are the ones docs/finetune.md shows. The lr suits this tiny random model;
on SmolLM2-135M the sweep in the README chose lr 3e-5 for P-GAP in the activation subspace and
for MeZO (``pgap-finetune``'s defaults).
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Dict, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/, for tiny_model
from tiny_model import batch_loss, fixed_batch, tiny_llama  # noqa: E402


class RepeatedBatch(torch.utils.data.Dataset):
    """The rows of one batch, repeated ``times`` times: every training batch is that batch."""

    def __init__(self, batch: Dict[str, torch.Tensor], times: int) -> None:
        self.batch, self.rows, self.times = batch, len(batch["input_ids"]), times

    def __len__(self) -> int:
        return self.rows * self.times

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {k: v[i % self.rows] for k, v in self.batch.items()}


def main(output_dir: str = "") -> Tuple[float, float, dict]:
    """Train for 400 ZO steps; (loss before, loss after, the trainer's last training log)."""
    from transformers import TrainingArguments

    from pgap.hf import ZOTrainer

    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    model, batch = tiny_llama(), fixed_batch()
    ds = RepeatedBatch(batch, times=400)
    before = batch_loss(model, batch)
    out = output_dir or tempfile.mkdtemp(prefix="zotrainer-")

    args = TrainingArguments(output_dir=out, max_steps=400, learning_rate=1e-2,
                             per_device_train_batch_size=8, lr_scheduler_type="constant",
                             logging_steps=50, save_strategy="no", report_to=[], use_cpu=True)
    trainer = ZOTrainer(model=model, args=args, train_dataset=ds, zo_method="pgap", zo_eps=1e-3,
                        zo_options={"subspace": "activation", "rank": 4, "window": 20, "probes": 4})
    trainer.train()                       # or trainer.train(resume_from_checkpoint=...)
    print(trainer.zo_optimizer.diagnostics())   # trainer.optimizer is accelerate's wrapper

    logs = [h for h in trainer.state.log_history if "projected_grad" in h]
    return before, batch_loss(model, batch), logs[-1]


if __name__ == "__main__":
    first, last, log = main()
    print(f"loss on the fixed batch: {first:.4f} -> {last:.4f}; last log: {log}")
