"""The benchmark script (run by `make demo`) runs end to end; no timing is asserted."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_perturb.py"


def test_bench_quick_smoke(tmp_path):
    csv = tmp_path / "perturb.csv"
    out = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--min-log2", "12", "--max-log2", "12",
         "--dtypes", "fp32", "--repeats", "2", "--warmup", "1", "--csv", str(csv), "--no-plot"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "perturb_ [native]" in out.stdout and "eager randn + add_" in out.stdout
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("timestamp,git_rev,") and len(rows) >= 4  # header + 3 paths or more


LOWRANK = Path(__file__).resolve().parents[1] / "bench" / "bench_lowrank.py"


def test_bench_lowrank_quick_smoke(tmp_path):
    csv = tmp_path / "lowrank.csv"
    out = subprocess.run(
        [sys.executable, str(LOWRANK), "--quick", "--device", "cpu", "--backends", "native",
         "--repeats", "1", "--warmup", "0", "--csv", str(csv), "--plot", str(tmp_path / "p.png"),
         "--no-progress"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for section in ("== lowrank", "== sketch", "== rsvd"):
        assert section in out.stdout
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("timestamp,git_rev,") and len(rows) == 1 + 3 + 2 + 2
    assert (tmp_path / "p.png").stat().st_size > 0


BF16 = Path(__file__).resolve().parents[1] / "bench" / "bench_bf16.py"


def test_bench_bf16_model_free_parts(tmp_path):
    """The sub-ulp and cosine parts (no model): stochastic rounding keeps float32's loss decrease
    within [0.75, 1.33], in place loses to functional on the cosine, and the CSV is written."""
    csv = tmp_path / "bf16.csv"
    out = subprocess.run(
        [sys.executable, str(BF16), "--parts", "subulp", "cosine", "--subulp-steps", "300",
         "--cosine-steps", "50", "--csv", str(csv)],
        capture_output=True, text=True, timeout=600)
    assert "PASS subulp" in out.stdout, out.stdout + out.stderr
    cos = {line.split()[0]: float(line.split("cosine")[1].split()[0])
           for line in out.stdout.splitlines() if line.startswith("  ") and "magnitude ratio" in line}
    assert cos["inplace"] < cos["functional,"]
    assert csv.read_text().splitlines()[0].endswith("part,setting,metric,value")
