"""bench/steps/zo_step.py runs end to end on the tiny model (--quick); no timing is asserted."""
import csv
import subprocess

import pytest

from conftest import ROOT, bench_command

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

BENCH = bench_command("steps.zo_step")
METHODS = ["forward only", "baseline MeZO (eager)", "pgap.MeZO", "pgap.MeZO inplace",
           "pgap.PGAP inplace", "pgap.PGAP functional"]


def test_bench_zo_step_quick_smoke(tmp_path):
    out_csv, png = tmp_path / "zo_step.csv", tmp_path / "zo_step.png"
    out = subprocess.run(
        [*BENCH, "--quick", "--device", "cpu", "--repeats", "1", "--warmup", "0",
         "--csv", str(out_csv), "--plot", str(png), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "== zo step: one regular step, tiny" in out.stdout
    assert "== probe phase: one window-start step, tiny" in out.stdout
    for method in METHODS:
        assert method in out.stdout
    verdicts = [line for line in out.stdout.splitlines() if line.startswith(("PASS:", "FAIL:"))]
    assert len(verdicts) == 2, out.stdout  # the MeZO ratio and the P-GAP functional share
    assert any("pgap.MeZO non-forward" in v for v in verdicts)
    assert any("pgap.PGAP functional non-forward" in v for v in verdicts)

    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(METHODS) + 2  # one step row per method + two probe-phase rows
    assert [r["method"] for r in rows if r["section"] == "step"] == METHODS
    assert {r["method"] for r in rows if r["section"] == "probe"} == {"pgap.PGAP inplace",
                                                                      "pgap.PGAP functional"}
    for r in rows:
        assert r["model"] == "tiny" and r["device"] == "cpu" and r["git_rev"]
        assert float(r["step_ms"]) > 0 and float(r["forward_ms"]) > 0
    steps = {r["method"]: r for r in rows if r["section"] == "step"}
    assert steps["forward only"]["forwards_per_step"] == "1"
    for method in METHODS[1:]:
        assert steps[method]["forwards_per_step"] == "2"  # a regular step: two forwards
    for r in rows:
        if r["section"] == "probe":
            assert r["forwards_per_step"] == "22"  # 10 probes x 2 + the step's 2
            assert float(r["amortized_probe_ms"]) > 0
    assert png.stat().st_size > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
