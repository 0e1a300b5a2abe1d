"""bench/steps/distributed.py runs end to end on the tiny model (1 step per configuration); no
timing is asserted, only what the table and CSV must contain."""
import csv
import subprocess

import pytest

from conftest import ROOT, bench_command

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

BENCH = bench_command("steps.distributed")


def test_bench_distributed_tiny_smoke(tmp_path):
    out_csv, png = tmp_path / "distributed.csv", tmp_path / "distributed.png"
    out = subprocess.run([*BENCH, "--model", "tiny", "--methods", "mezo",
                          "--steps", "1", "--warmup", "0", "--csv", str(out_csv), "--plot", str(png)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("1 process", "DP x2", "FSDP2 x2"):
        assert name in out.stdout
    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert rows["1 process"]["ours_bytes_per_step"] == "0.0"
    # two forwards, each all-reducing (w·L, w) in float64: 32 bytes per step and rank
    assert float(rows["DP x2"]["ours_bytes_per_step"]) == 32.0
    assert float(rows["FSDP2 x2"]["ours_bytes_per_step"]) == 32.0
    assert float(rows["FSDP2 x2"]["param_MiB_per_rank"]) < float(rows["DP x2"]["param_MiB_per_rank"])
    assert int(rows["DP x2"]["ddp_grad_bytes_per_step"]) > 1000 * 32
    assert png.exists()
