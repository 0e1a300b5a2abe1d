"""ZOTrainer on the tiny Llama under torchrun (tests/optimizers/test_hf.py): writes each rank's losses, final
weights and the wrapped model's type to OUT/rank{r}.pt."""
import os
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "optimizers")]
from test_hf import Tokens  # noqa: E402
from zo_problems import tiny_llama  # noqa: E402

from pgap.distributed import exit_ranks  # noqa: E402
from pgap.hf import ZOTrainer  # noqa: E402

out, method = Path(sys.argv[1]), sys.argv[2]
model, _ = tiny_llama()
args = TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=2,
                         learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=1,
                         save_steps=2, report_to=[], seed=0, use_cpu=True,
                         dataloader_num_workers=0, disable_tqdm=True)
options = {"rank": 2, "window": 2, "probes": 2, "mode": "functional"} if method == "pgap" else {}
trainer = ZOTrainer(model=model, args=args, train_dataset=Tokens(), zo_method=method,
                    zo_options=options)
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
torch.save({"losses": losses, "world": trainer.zo_optimizer.world_size,
            "wrapped": type(trainer.model_wrapped).__name__,
            "weights": {k: v.clone() for k, v in model.state_dict().items()}},
           out / f"rank{os.environ['RANK']}.pt")
# end after a barrier, without tearing gloo down at interpreter exit (see exit_ranks)
exit_ranks(0)
