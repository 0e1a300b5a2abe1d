"""bench/experiments/compare.py protocol v2: the statistics (95 % t intervals, paired differences), the lr
choice, the report on a hand-made CSV, and resumption (done checkpoints are neither evaluated nor
written again). Fast: no real model (the resumption test trains the tiny Llama of
tests/tiny_task.py for a few steps)."""
import csv
import math
import statistics
import subprocess
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, bench_command

from bench import common
from bench.experiments import compare as bc

from tiny_task import tiny_model  # noqa: E402,F401  (the fixture)


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 200):
        assert bc.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df


def test_paired_ci_on_a_hand_made_example():
    """Differences over the seeds both ran (seed 3 only has the baseline): 0.02, 0.01, 0.05 ->
    mean 0.02667, sd 0.020817, half-width t(0.975, 2) = 4.303 times sd/sqrt(3) = 0.05172."""
    method = {0: 0.70, 1: 0.72, 2: 0.75}
    baseline = {0: 0.68, 1: 0.71, 2: 0.70, 3: 0.90}
    mean, half, n = bc.paired_ci(method, baseline)
    assert n == 3
    assert mean == pytest.approx(0.08 / 3)
    assert half == pytest.approx(4.303 * 0.0208167 / math.sqrt(3), rel=1e-4)
    # unpaired, the same method would have a wider interval (the seeds' spread is shared)
    assert bc.mean_ci([0.70, 0.72, 0.75])[1] > half / 2
    assert math.isnan(bc.mean_ci([0.5])[1]) and bc.mean_ci([])[2] == 0


def _row(phase, method, lr, seed, checkpoint, test="", dev="", dev_loss="", mem=""):
    return dict(protocol="v2", phase=phase, git_rev="abc", timestamp="t", method=method, options="", lr=lr,
                eps=0.001, seed=seed, dtype="bf16", batch=8, checkpoint=checkpoint, step=checkpoint // 2,
                forwards=checkpoint, status="ok", train_loss=0.5, test_examples=2000 if test != "" else 0,
                test_accuracy=test, test_loss=0.6 if test != "" else "", dev_examples=500, dev_accuracy=dev,
                dev_loss=dev_loss, peak_memory_mb=mem, memory_kind="rss", train_seconds=1, eval_seconds=1)


def _write(path, rows):
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=bc.FIELDS_V2)
        w.writeheader()
        w.writerows(rows)


def test_sweep_choice_and_best_lr():
    rows = [_row("sweep", "mezo", lr, 0, 600, dev=acc, dev_loss=0.5) for lr, acc in
            ((1e-5, 0.70), (3e-5, 0.74), (1e-4, 0.74))] + [_row("sweep", "mezo", 3e-5, 0, 300, dev=0.9, dev_loss=0.5)]
    assert bc.sweep_choice(rows, "bf16") == {("mezo", ""): 3e-5}  # at the budget; a tie to the smaller lr
    runs = bc.resolve_lrs(bc.parse_grid(["mezo=best,1e-3"]), rows, "bf16")
    assert runs == [("mezo", "", 3e-5), ("mezo", "", 1e-3)]
    with pytest.raises(SystemExit):
        bc.resolve_lrs(bc.parse_grid(["backprop-adamw=best"]), rows, "bf16")


def test_report_prints_ci_and_paired_difference(tmp_path):
    """Three seeds: MeZO 0.68/0.71/0.70 at 600 forwards, AdamW 0.70/0.72/0.75 (the hand-made
    example): the table prints 72.3 ± 6.3 (3), the paired line +2.7 ± 5.2 (3) without a star
    (the CI holds 0); a method 10 points above MeZO at every seed gets a star."""
    rows = [_row("zero-shot", "zero-shot", 0.0, 0, 0, test=0.6, dev=0.6, dev_loss=0.7)]
    for seed, (m, a) in enumerate(((0.68, 0.70), (0.71, 0.72), (0.70, 0.75))):
        for cp in (300, 600):
            rows.append(_row("final", "mezo", 3e-5, seed, cp, test=m, dev=0.7, dev_loss=0.6, mem=1100))
            rows.append(_row("final", "backprop-adamw", 1e-5, seed, cp, test=a, dev=0.7, dev_loss=0.5, mem=3800))
            rows.append(_row("final", "agzo", 3e-5, seed, cp, test=m + 0.1, dev=0.7, dev_loss=0.5, mem=1200))
    path = tmp_path / "v2.csv"
    _write(path, rows)
    out = subprocess.run([*bench_command("experiments.compare"), "--report", "--csv", str(path),
                          "--no-plot"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    adamw = [line for line in lines if line.strip().startswith("backprop-adamw")]
    assert "72.3 ± 6.3 (3)" in adamw[0]  # mean_ci of 0.70, 0.72, 0.75
    assert adamw[1].rstrip().endswith("+2.7 ± 5.2 (3)")  # paired vs MeZO, no star
    agzo = [line for line in lines if line.strip().startswith("agzo")]
    assert agzo[1].rstrip().endswith("+10.0 ± 0.0 (3)*")
    share = next(i for i, line in enumerate(lines) if line.startswith("share of the first-order gain"))
    assert any(line.split()[0] == "mezo" and "%" in line and "1100 MB" in line for line in lines[share:])


def test_report_pairs_dtypes_across_csvs(tmp_path):
    """bf16 runs in one CSV, float32 runs of the same method, lr and seeds in another (--also):
    the report prints float32 − bf16 per checkpoint, paired by seed: differences +0.01, −0.01,
    +0.03 at 600 forwards -> +1.0 ± 5.0 (3), no star; a method only in bf16 gets no line."""
    bf16, fp32 = [], []
    for seed, (a, b) in enumerate(((0.70, 0.71), (0.72, 0.71), (0.68, 0.71))):
        bf16.append(_row("final", "mezo", 3e-5, seed, 600, test=a, dev=0.7, dev_loss=0.6))
        bf16.append(_row("final", "agzo", 3e-5, seed, 600, test=a, dev=0.7, dev_loss=0.6))
        fp32.append(dict(_row("final", "mezo", 3e-5, seed, 600, test=b, dev=0.7, dev_loss=0.6), dtype="fp32"))
    _write(tmp_path / "bf16.csv", bf16)
    _write(tmp_path / "fp32.csv", fp32)
    out = subprocess.run([*bench_command("experiments.compare"), "--report", "--csv", str(tmp_path / "bf16.csv"),
                          "--also", str(tmp_path / "fp32.csv"), "--no-plot"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("== dtypes"))
    pairs = [line for line in lines[head + 1:] if line.startswith("  ")]
    assert len(pairs) == 1 and pairs[0].split()[0] == "mezo" and "fp32 − bf16" in pairs[0]
    half = 4.303 * statistics.stdev([0.01, -0.01, 0.03]) / math.sqrt(3) * 100
    assert pairs[0].rstrip().endswith(f"@600: +1.0 ± {half:.1f} (3)")


def test_report_still_reads_a_v1_csv(tmp_path):
    head = ("git_rev,timestamp,method,options,lr,eps,seed,batch,budget,split,examples,step,"
            "forwards,accuracy,train_loss,seconds")
    rows = [head, "r,t,mezo,,3e-05,0.001,0,8,600,test,300,300,600,0.70,0.6,1",
            "r,t,mezo,,3e-05,0.001,0,8,600,dev,200,300,600,0.66,0.6,1"]
    path = tmp_path / "compare.csv"
    path.write_text("\n".join(rows) + "\n")
    out = subprocess.run([*bench_command("experiments.compare"), "--report", "--csv", str(path),
                          "--no-plot"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<- chosen" in out.stdout, out.stderr


def test_a_restarted_run_skips_the_checkpoints_it_wrote(tiny_model, tmp_path, capfd):  # noqa: F811
    """run_one with checkpoint 8 already in the CSV writes only checkpoint 16's row and the
    losses of its segment (steps 5..8); the two-point forward count is 2 per step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pgap.finetune.data import load_text_label_file
    from pgap.finetune.prompts import PromptClassifier

    tok = AutoTokenizer.from_pretrained(tiny_model / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model / "model")
    for p in model.parameters():
        p.requires_grad_(True)
    task = load_text_label_file(tiny_model / "task.csv", text_column="review", label_column="verdict",
                                label_words=[" terrible", " great"], n_train=40, n_dev=10, n_test=20)
    clf = PromptClassifier(tok, task.template, task.label_words)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SimpleNamespace(phase="final", rev="r", eps=1e-2, dtype="fp32", batch_size=4, checkpoints=[8, 16],
                           csv=tmp_path / "v2.csv", loss_csv=tmp_path / "v2_loss.csv", no_progress=False)
    bc.run_one(model, initial, clf, task, "mezo", "", 1e-3, 0, args, done={8})
    assert "mezo lr 0.001 seed 0" in capfd.readouterr().err  # the run's progress bar, on stderr
    args.no_progress = True
    rows = common.read_csv_rows(args.csv)
    assert [(r["checkpoint"], r["step"], r["forwards"]) for r in rows] == [("16", "8", "16")]
    assert rows[0]["test_accuracy"] != "" and rows[0]["dev_loss"] != ""
    assert [int(r["step"]) for r in common.read_csv_rows(args.loss_csv)] == [5, 6, 7, 8]
    assert bc.done_checkpoints(rows) == {("final", "mezo", "", 1e-3, 0, "fp32"): {16}}
    # the first-order baseline: 3 forwards per step, so checkpoint 8 comes after 2 steps
    bc.run_one(model, initial, clf, task, "backprop-sgd", "", 1e-2, 0, args, done=set())
    fo = [r for r in common.read_csv_rows(args.csv) if r["method"] == "backprop-sgd"]
    assert [(r["step"], r["forwards"]) for r in fo] == [("2", "6"), ("5", "15")]
    # a checkpoint another process wrote while this one ran (it started with done empty) is not
    # evaluated or written twice
    other = dict(rows[0], seed="1", checkpoint="8", step="4", forwards="8", test_accuracy="0.5")
    common.append_csv(args.csv, bc.FIELDS_V2, [other])
    bc.run_one(model, initial, clf, task, "mezo", "", 1e-3, 1, args, done=set())
    seed1 = [r for r in common.read_csv_rows(args.csv) if r["method"] == "mezo" and r["seed"] == "1"]
    assert [(r["checkpoint"], r["test_accuracy"]) for r in seed1][0] == ("8", "0.5")
    assert [r["checkpoint"] for r in seed1] == ["8", "16"]


def test_paired_lines_difference_per_checkpoint():
    """The probe control against SubZero: seed by seed, only the seeds both ran."""
    row = lambda acc: {"test_accuracy": str(acc)}  # noqa: E731
    probe, control = ("pgap", "subspace=probe", 3e-5, "bf16"), ("subzero", "", 3e-5, "bf16")
    table = {probe: {300: {0: row(0.60), 1: row(0.70), 2: row(0.65)}},
             control: {300: {0: row(0.62), 1: row(0.71)}, 600: {0: row(0.7)}}}
    (line,) = bc.paired_lines(table, control, [probe], [300, 600])
    assert "-1.5 ± 6.4 (2)" in line and line.rstrip().endswith("-")
