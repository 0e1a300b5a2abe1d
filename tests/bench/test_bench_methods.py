"""bench/experiments/methods.py runs end to end with --quick (tiny budgets, one seed, both problems);
no loss value is asserted."""
import csv
import subprocess

import pytest

from conftest import ROOT, bench_command

BENCH = bench_command("experiments.methods")
METHODS = ("MeZO", "P-GAP", "MeZO-GV", "MeZO-Greedy", "LDSD")
PROBLEMS = ("lowrank-grad", "tiny-lm")


def test_bench_methods_quick_smoke(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    out_csv, out_png = tmp_path / "methods.csv", tmp_path / "methods.png"
    out = subprocess.run(
        [*BENCH, "--quick", "--csv", str(out_csv), "--plot", str(out_png),
         "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for problem in PROBLEMS:
        assert f"== {problem}:" in text
        assert f"verdict {problem}" in text
    assert "final loss (mean ± std)" in text and "vs MeZO" in text and "fwd/step" in text
    for method in METHODS:
        assert f"\n{method} " in text, method

    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"timestamp", "git_rev", "problem", "method", "seed", "forwards",
                     "loss"} <= set(rows[0])
    for problem in PROBLEMS:
        mine = [r for r in rows if r["problem"] == problem]
        assert {r["method"] for r in mine} == set(METHODS)
        assert {r["seed"] for r in mine} == {"0"}
        for method in METHODS:
            points = [r for r in mine if r["method"] == method]
            assert len(points) >= 2 and int(points[0]["forwards"]) == 0
            assert int(points[-1]["forwards"]) >= int(points[-1]["budget"])
    assert out_png.stat().st_size > 0
