"""bench/kernels/subspace.py runs end to end (quick mode, CPU); no timing is asserted."""
import subprocess

from conftest import ROOT, bench_command

BENCH = bench_command("kernels.subspace")


def test_bench_subspace_quick_smoke(tmp_path):
    csv = tmp_path / "subspace.csv"
    out = subprocess.run(
        [*BENCH, "--quick", "--device", "cpu", "--backends", "native",
         "--ranks", "4", "--repeats", "1", "--warmup", "0", "--csv", str(csv),
         "--plot", str(tmp_path / "p.png"), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "W <- W + Xi @ V.T" in out.stdout and "native" in out.stdout
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("timestamp,git_rev,") and "GB_per_s" in rows[0]
    # 3 SmolLM2 matrices x (eager, copy, native); rounding: 2 matrices x (nearest, stochastic)
    assert len(rows) == 1 + 3 * 3 + 2 * 2
    assert "subspace_perturb_ [native] bf16 stochastic / nearest rounding" in out.stdout
    assert (tmp_path / "p.png").stat().st_size > 0
