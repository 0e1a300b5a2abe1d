"""bench/experiments/pgap_scale.py --report: |g| summaries per (config, seed) against MeZO at the same
seed (the real-model runs themselves are not run here)."""
import subprocess

from conftest import ROOT, bench_command

BENCH = bench_command("experiments.pgap_scale")
HEADER = "config,step,g,loss,forwards,lr,eps,seed,dtype,scale,frozen_vectors,git_rev,timestamp\n"


def test_report_compares_each_config_with_mezo_at_its_seed(tmp_path):
    rows = [("mezo", 1, 2.0), ("mezo", 2, -2.0), ("pgap-probe", 1, 1.0), ("pgap-probe", 2, -1.0),
            ("mezo-matrices", 1, 4.0), ("subzero-matrices", 1, -2.0)]
    path = tmp_path / "g.csv"
    path.write_text(HEADER + "".join(f"{c},{s},{g},1.0,{2 * s},3e-05,0.001,0,bf16,,False,abc,t\n"
                                     for c, s, g in rows))
    out = subprocess.run([*BENCH, "--report", "--csv", str(path)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = {line.split()[2]: line for line in out.splitlines()}
    assert "mean 0.50, RMS 0.50" in lines["pgap-probe"]
    assert "mean 0.50, RMS 0.50" in lines["subzero-matrices"]  # against mezo-matrices
    assert "mean 1.00" in lines["mezo"]
