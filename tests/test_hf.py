"""ZOTrainer: a transformers Trainer whose step is a pgap ZO step (tiny random Llama, no downloads)."""
import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import TrainingArguments  # noqa: E402

from pgap.hf import ZOTrainer  # noqa: E402
from zo_problems import tiny_llama  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, length=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_trainer(out, method, options, max_steps, **kw):
    model, _ = tiny_llama()
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=kw.pop("lr", 3e-3), lr_scheduler_type="constant",
                             logging_steps=1, save_steps=kw.pop("save_steps", 1000),
                             report_to=[], seed=0, use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, **kw)
    return ZOTrainer(model=model, args=args, train_dataset=Tokens(), zo_method=method,
                     zo_options=options), model


@pytest.mark.parametrize("method, options, lr", [
    ("mezo", {}, 3e-3), ("pgap", {"rank": 2, "window": 3, "probes": 2, "mode": "functional"}, 0.1),
    ("ldsd", {"lr_mu": 0.1}, 3e-3), ("agzo", {"rank": 2, "refresh": 2}, 3e-3),
])
def test_zotrainer_trains_and_logs(tmp_path, method, options, lr):
    trainer, model = make_trainer(tmp_path, method, options, 6, lr=lr)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    assert trainer.zo_optimizer.steps_done == 6
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(l == l for l in losses)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_zotrainer_resume_from_checkpoint_continues_the_trajectory(tmp_path):
    full, _ = make_trainer(tmp_path / "full", "mezo", {}, 6)
    full.train()
    part, _ = make_trainer(tmp_path / "part", "mezo", {}, 6, save_steps=3)
    part.train()
    resumed, model = make_trainer(tmp_path / "part", "mezo", {}, 6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    assert resumed.zo_optimizer.steps_done == 6
    a = full.model.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, a[k], rtol=0, atol=0, msg=k)
    state = json.loads((tmp_path / "part" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_zotrainer_with_peft_lora_perturbs_only_the_adapters(tmp_path):
    pytest.importorskip("peft")
    from pgap.lora import apply_lora

    def trainer(out, max_steps, save_steps=1000):
        base, _ = tiny_llama()
        model = apply_lora(base, r=2, targets=("q_proj", "v_proj"))
        args = TrainingArguments(output_dir=str(out), max_steps=max_steps,
                                 per_device_train_batch_size=4, learning_rate=1e-2,
                                 lr_scheduler_type="constant", logging_steps=1,
                                 save_steps=save_steps, report_to=[], seed=0, use_cpu=True,
                                 dataloader_num_workers=0, disable_tqdm=True)
        return ZOTrainer(model=model, args=args, train_dataset=Tokens(), zo_method="mezo"), model

    full, model = trainer(tmp_path / "full", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full.train()
    names = [t.name for t in full.zo_optimizer.trainables]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)  # the frozen base is never written
    assert any("lora_B" in k for k in changed)

    part, _ = trainer(tmp_path / "part", 4, save_steps=2)
    part.train()
    resumed, model = trainer(tmp_path / "part", 4, save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("method", ["mezo", "pgap"])
def test_zotrainer_under_torchrun_two_ranks(tmp_path, method):
    """2 gloo ranks: no DDP wrapper, both ranks share the losses and end with the same weights,
    checkpoints are written once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "zotrainer_ranks.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), str(tmp_path), method],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in ranks:
        assert res["world"] == 2 and res["wrapped"] == "_Unwrapped" and len(res["losses"]) == 4
    assert ranks[0]["losses"] == ranks[1]["losses"]
    for k, v in ranks[0]["weights"].items():
        assert torch.equal(v, ranks[1]["weights"][k]), k
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
