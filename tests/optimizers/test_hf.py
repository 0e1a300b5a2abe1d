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


def make_trainer(out, method, options, max_steps, zo=None, **kw):
    model, _ = tiny_llama()
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=kw.pop("lr", 3e-3), lr_scheduler_type="constant",
                             logging_steps=kw.pop("logging_steps", 1),
                             save_steps=kw.pop("save_steps", 1000),
                             report_to=[], seed=0, use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, **kw)
    return ZOTrainer(model=model, args=args, train_dataset=Tokens(), zo_method=method,
                     zo_options=options, **(zo or {})), model


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


@pytest.mark.parametrize("method, options", [
    ("mezo", {}), ("pgap", {"rank": 2, "window": 2, "probes": 2, "mode": "functional"}),
    ("agzo", {"rank": 2, "refresh": 3, "first_iters": 0, "mode": "functional"}),
])  # the side paths hold updates at the step-3 checkpoint (merged: AGZO at step 3, P-GAP at 4)
def test_zotrainer_checkpoints_leave_the_trajectory_and_resume_it(tmp_path, method, options):
    """Checkpoints are taken unmerged (the side paths' pending updates in the optimizer state,
    not in the weights): the run that saved, and the run resumed from its step-3 checkpoint,
    equal the run that never saved."""
    full, _ = make_trainer(tmp_path / "full", method, options, 6)
    full.train()
    part, part_model = make_trainer(tmp_path / "part", method, options, 6, save_steps=3)
    part.train()
    resumed, model = make_trainer(tmp_path / "part", method, options, 6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    assert resumed.zo_optimizer.steps_done == 6
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h]
              for t in (full, part, resumed)]
    assert losses[1] == losses[0] and losses[2] == losses[0]  # resumed: its history restored
    a = full.model.state_dict()  # merges: the trained weights
    for other in (part_model, model):
        for k, v in other.state_dict().items():
            torch.testing.assert_close(v, a[k], rtol=0, atol=0, msg=k)
    state = json.loads((tmp_path / "part" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_zotrainer_with_peft_lora_perturbs_only_the_adapters(tmp_path):
    pytest.importorskip("peft")
    from pgap.finetune.lora import apply_lora

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

    script = Path(__file__).resolve().parents[1] / "scripts" / "zotrainer_ranks.py"
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


# Errors in the user's words, raised before training starts (issue 26 item 5).
@pytest.mark.parametrize("options, match", [
    ({"eps": 1e-3}, r"zo_options must not contain 'eps': set it with ZOTrainer\(zo_eps=\.\.\.\)"),
    ({"lr": 1e-3}, r"'lr': set it with TrainingArguments\(learning_rate=\.\.\.\)"),
    ({"seed": 1}, r"'seed': set it with TrainingArguments\(seed=\.\.\.\)"),
    ({"backend": "native"}, r"'backend': set it with ZOTrainer\(zo_backend=\.\.\.\)"),
    ({"weight_decay": 0.1}, r"'weight_decay': set it with TrainingArguments\(weight_decay=\.\.\.\)"),
    ({"rnak": 2}, r"zo_options has 'rnak', which zo_method='pgap' \(PGAP\) does not take; its "
                  r"options are rank, window, probes, "),
])
def test_zotrainer_zo_options_errors_say_what_to_write(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, "pgap", options, 2)


def test_zotrainer_unknown_method_lists_the_methods(tmp_path):
    with pytest.raises(ValueError, match=r"unknown method 'sgd'; choose one of mezo, pgap, "):
        make_trainer(tmp_path, "sgd", {}, 2)


def _trainer_with_optimizers(tmp_path, make_opt, **kw):
    model, _ = tiny_llama()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=1,
                             report_to=[], seed=0, use_cpu=True, disable_tqdm=True)
    return ZOTrainer(model=model, args=args, train_dataset=Tokens(),
                     optimizers=(make_opt(model), None), **kw)


def test_zotrainer_takes_a_pgap_optimizer_and_refuses_others(tmp_path):
    import pgap

    trainer = _trainer_with_optimizers(tmp_path, lambda m: pgap.MeZO(m, lr=3e-3, seed=0))
    trainer.train()
    assert trainer.zo_optimizer.steps_done == 3
    reference = make_trainer(tmp_path / "ref", "mezo", {}, 3)[0]  # same lr and seed, built by name
    reference.train()
    ref_model = reference.model.state_dict()
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, ref_model[k]), k
    with pytest.raises(TypeError, match=r"optimizers\[0\] is a torch.optim.sgd.SGD; ZOTrainer steps "
                                        r"with a pgap ZO optimizer: leave optimizers out"):
        _trainer_with_optimizers(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"with optimizers=\(opt, \.\.\.\) give those options to opt"):
        _trainer_with_optimizers(tmp_path, lambda m: pgap.MeZO(m, lr=1e-3),
                                 zo_options={"mode": "inplace"})
    with pytest.raises(ValueError, match="tunes parameters that are not the trainer's model's"):
        _trainer_with_optimizers(tmp_path, lambda m: pgap.MeZO(tiny_llama()[0], lr=1e-3))


def test_zotrainer_logs_the_projected_gradient_not_grad_norm(tmp_path):
    """Trainer's grad_norm would be 0 at every log (issue 26 item 6): ZOTrainer logs g."""
    trainer, _ = make_trainer(tmp_path, "mezo", {}, 4, logging_steps=2)
    seen = []
    step = trainer.training_step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(trainer.zo_optimizer.diagnostics()["projected_grad"])
        return out

    trainer.training_step = recording_step
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and len(seen) == 4
    for log, (g1, g2) in zip(logs, [seen[:2], seen[2:]]):
        assert "grad_norm" not in log
        assert log["projected_grad"] == g2
        assert log["projected_grad_rms"] == pytest.approx(((g1 * g1 + g2 * g2) / 2) ** 0.5, rel=1e-12)
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"  # accelerate's wrapper
    assert trainer.optimizer.optimizer is trainer.zo_optimizer


@pytest.mark.parametrize("method, options", [("mezo", {}), ("agzo", {"rank": 2, "refresh": 2})])
def test_zotrainer_paired_forward_follows_the_unpaired_run(tmp_path, method, options):
    """One forward over the batch stacked twice, each half's loss from the model's own
    loss_function: float32, so the paired steps equal the unpaired ones up to rounding (MeZO's
    − copies mirrored, AGZO's side terms exact), in functional mode, which it picks itself."""
    runs = []
    for paired in (False, True):
        trainer, _ = make_trainer(tmp_path / str(paired), method, dict(options, mode="functional")
                                  if not paired else options, 4, zo={"zo_paired_forward": paired})
        calls = []
        if paired:
            pair = trainer._pair_losses
            trainer._pair_losses = lambda *a: calls.append(1) or pair(*a)
        trainer.train()
        assert trainer.zo_optimizer.mode == "functional"
        assert len(calls) == (4 if paired else 0)
        runs.append(([h["loss"] for h in trainer.state.log_history if "loss" in h], trainer.model.state_dict()))
    (l0, w0), (l1, w1) = runs
    assert l1 == pytest.approx(l0, rel=1e-4)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-4, atol=1e-6, msg=k)


def test_zotrainer_paired_forward_refusals(tmp_path):
    with pytest.raises(ValueError, match="zo_paired_forward=True needs mezo, mezo-gv, mezo-greedy, ldsd, agzo, pgap or subzero in "
                                         "functional mode; got MeZO in mode 'inplace'"):
        make_trainer(tmp_path, "mezo", {"mode": "inplace"}, 1, zo={"zo_paired_forward": True})[0].train()
    with pytest.raises(TypeError, match="zo_paired_forward must be a bool"):
        make_trainer(tmp_path, "mezo", {}, 1, zo={"zo_paired_forward": "yes"})


def test_zotrainer_bf16_autocast_measures_each_point(tmp_path):
    """``TrainingArguments(bf16=True)`` on float32 weights: accelerate runs each forward under
    bf16 autocast (pgap-finetune's bf16-mixed), a context per forward, so the weights perturbed
    in place between a step's two forwards are cast again: the two losses differ at every step."""
    trainer, model = make_trainer(tmp_path, "mezo", {}, 3, bf16=True)
    linear = {id(m.weight) for layer in model.model.layers for m in layer.modules()
              if isinstance(m, torch.nn.Linear)}
    for p in model.parameters():  # train only what autocast casts: a stale cast would give equal losses
        p.requires_grad_(id(p) in linear)
    seen, points = [], []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda mod, args, out: seen.append((mod.weight.dtype, out.dtype)))
    step = trainer.training_step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        d = trainer.zo_optimizer.diagnostics()
        points.append((d["loss_plus"], d["loss_minus"]))
        return out

    trainer.training_step = recording_step
    trainer.train()
    hook.remove()
    assert seen and all(s == (torch.float32, torch.bfloat16) for s in seen)
    assert len(points) == 3 and all(plus != minus for plus, minus in points)
