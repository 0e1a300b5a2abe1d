"""`make gpu-check`'s script (bench/tools/gpu_check.py): every step runs, in its dry mode on the CPU, so
that it cannot rot before a GPU appears; without a GPU the plain command is a one-line no-op."""
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "tools" / "gpu_check.py"
STEPS = ("build", "pytest", "selftest", "host", "perturb", "lowrank", "subspace", "perturbed",
         "zo_step[native]", "zo_step[triton]")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().count("\n") == 0 and "no CUDA GPU" in proc.stdout
    assert not (tmp_path / "r").exists()


def test_dry_run_executes_every_step(tmp_path):
    out = tmp_path / "report"
    packed = tmp_path / "report.tar.gz"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out),
                           "--archive", str(packed)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    with tarfile.open(packed) as tar:  # the whole report in one file
        assert sorted(tar.getnames()) == sorted(
            ["report"] + [f"report/{p.relative_to(out)}" for p in out.rglob("*")])
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| step")
            and not line.startswith("| ---")}
    assert set(rows) == set(STEPS), rows
    for step, status in rows.items():
        script = {"subspace": "bench/kernels/subspace.py", "perturbed": "bench/kernels/perturbed.py"}.get(step)
        expected = "SKIP" if script and not (ROOT / script).exists() else "PASS"
        assert status == expected, (step, status, summary)
    for field in ("device:", "driver:", "torch", "git revision:"):
        assert field in summary
    for csv in ("host.csv", "perturb.csv", "lowrank.csv", "perturbed.csv", "zo_step_native.csv",
                "zo_step_triton.csv"):
        assert (out / csv).exists() and (out / csv).read_text().count("\n") >= 2, csv
    assert "PASS" in (out / "selftest.log").read_text()
    assert "- " in summary.split("## Targets")[1]  # the benchmarks' target lines are collected


def test_archive_packs_the_report_folder(tmp_path):
    from bench.tools.gpu_check import archive
    report = tmp_path / "2026-01-01-gpu"
    (report / "sub").mkdir(parents=True)
    (report / "summary.md").write_text("# summary\n")
    (report / "sub" / "perturb.csv").write_text("a,b\n1,2\n")
    target = archive(report, tmp_path / "out" / "report.tar.gz")
    with tarfile.open(target) as tar:
        assert sorted(tar.getnames()) == ["2026-01-01-gpu", "2026-01-01-gpu/sub",
                                          "2026-01-01-gpu/sub/perturb.csv", "2026-01-01-gpu/summary.md"]
        assert tar.extractfile("2026-01-01-gpu/summary.md").read() == b"# summary\n"
