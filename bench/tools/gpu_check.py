"""``make gpu-check``: measure a CUDA GPU machine in one command and write one report folder.

On a machine with a CUDA GPU (no network needed), in order, each step a subprocess with its own
time limit, all inside one overall budget (default 480 s):

1. ``build``     -- compile ``pgap_kernels._C`` in place for this GPU's architecture only;
2. ``pytest``    -- ``pytest -m gpu tests`` (TRITON_INTERPRET unset);
3. ``selftest``  -- ``python -m pgap_kernels.info --selftest``;
   ``host``      -- ``kernels.host_overhead``: host time per op while the GPU is busy, and whether
   any op waited for it;
4. the quick benchmarks, each for the cuda and triton backends: ``kernels.perturb`` (>= 256 MiB
   tensors: GB/s, % of the measured copy bandwidth, ratio to eager ``randn`` + ``add_``; the
   Gaussian and the Rademacher stream against ``w.add_(o)``, ``perturb_`` and ``perturbed``, bf16
   rounded stochastically against to nearest: issue 23),
   ``kernels.lowrank``, ``kernels.subspace`` (OPT-1.3B and LLaMA-7B MLP shapes), ``kernels.perturbed``
   (when that script exists, issue 14), and
   ``steps.zo_step`` on the OPT-1.3B shape in bf16.

Everything goes to ``gpu-report/<date>-<device>/`` (``--out``): one log per step, the benchmarks'
CSVs and plots, and ``summary.md`` (device, driver, CUDA, torch and triton versions, git revision,
each step's status and time, and every PASS/FAIL target line the benchmarks printed). Exit
status: 0 when every step ran and every target passed, 1 otherwise (a dry run: every step ran).

Without a GPU it says so in one line and exits 0. ``--dry-run`` runs every step on the CPU
backends with tiny sizes (a CPU-only build into a temporary folder, the triton backend under
``TRITON_INTERPRET=1``): the test suite runs it so that this script cannot rot before a GPU
appears. See docs/gpu.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
# the checkout's packages (pgap_kernels, pgap, bench), also where they are not installed (an
# offline GPU machine, run as ``python bench/tools/gpu_check.py``); nothing is imported before the
# GPU check, so that a machine without torch gets its one line
sys.path[:0] = [str(ROOT), str(ROOT / "python")]
TARGET_LINE = re.compile(r"^\s*(PASS|FAIL)\b")


@dataclass
class Step:
    """One subprocess of the check. ``script``: a bench file that must exist (else SKIP)."""

    name: str
    argv: List[str]
    timeout: float
    env: Dict[str, str] = field(default_factory=dict)
    script: Optional[Path] = None
    what: str = ""


@dataclass
class Outcome:
    name: str
    status: str          # PASS, FAIL, TIMEOUT, SKIP
    seconds: float
    detail: str
    log: str
    targets: List[str]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/tools/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default gpu-report/<date>-<device>/)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every step on the CPU backends with tiny sizes (no GPU needed)")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds for all steps together (default %(default)s: 8 minutes)")
    p.add_argument("--skip", nargs="*", default=[], metavar="STEP",
                   help="steps to leave out (build, pytest, selftest, host, perturb, lowrank, "
                        "subspace, perturbed, zo_step)")
    p.add_argument("--archive", type=Path, default=None, metavar="FILE.tar.gz",
                   help="also pack the report folder into this one file (a remote runner that "
                        "returns only a few files, such as a lent GPU machine, brings it all back)")
    p.add_argument("--python", default=sys.executable, help="interpreter for every step")
    p.add_argument("--pytest-workers", type=int, default=None, metavar="N",
                   help="pytest-xdist workers for the GPU tests (default: up to 8 where "
                        "pytest-xdist is installed, else 1); Triton's JIT dominates their time")
    return p.parse_args(argv)


def cuda_device() -> Optional[Dict[str, str]]:
    """Name, compute capability, driver and versions of CUDA device 0, or None without one."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "arch": f"{major}{minor}",
            "driver": nvidia_smi("driver_version"), "cuda": str(torch.version.cuda),
            "torch": torch.__version__, "triton": _triton_version()}


def _triton_version() -> str:
    from pgap_kernels.info import triton_version  # noqa: PLC0415

    return triton_version() or "not installed"


def nvidia_smi(field_name: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_environment() -> Dict[str, str]:
    import torch  # noqa: PLC0415

    return {"name": "cpu (dry run)", "arch": "none", "driver": "none",
            "cuda": str(torch.version.cuda or "none"), "torch": torch.__version__,
            "triton": _triton_version()}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def plan(args: argparse.Namespace, env: Dict[str, str], out: Path, scratch: Path) -> List[Step]:
    """The steps, GPU sizes or (``--dry-run``) tiny CPU ones."""
    py = args.python
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    backends = ["native", "triton"] if dry else ["cuda", "triton"]
    csv = lambda name: ["--csv", str(out / f"{name}.csv")]  # noqa: E731
    plot = lambda name: ["--plot", str(out / f"{name}.png")]  # noqa: E731
    if dry:
        build = [py, "setup.py", "-q", "build_ext", "--build-lib", str(scratch / "lib"),
                 "--build-temp", str(scratch / "tmp")]
        build_env = {"PGAP_BUILD_CUDA": "0"}
    else:
        build = [py, "setup.py", "-q", "build_ext", "--inplace", "--build-temp",
                 str(ROOT / "build" / "gpu-check")]
        build_env = {"PGAP_CUDA_ARCHS": env["arch"]}
    pytest_args = (["-m", "gpu", "tests/kernels/test_selftest.py"] if dry else ["-m", "gpu", "tests"])
    workers = pytest_workers(args)
    if workers > 1:
        pytest_args = ["-n", str(workers)] + pytest_args
    perturb = (["--min-log2", "12", "--max-log2", "12", "--repeats", "3", "--warmup", "1",
                "--reference-max-log2", "12"] if dry else
               ["--min-log2", "27", "--max-log2", "27", "--repeats", "10", "--warmup", "3"])
    lowrank = (["--quick", "--no-memory", "--repeats", "2"] if dry else
               ["--shapes", "OPT-1.3B mlp", "--ranks", "8", "128", "--repeats", "10"])
    subspace = (["--shapes", "SmolLM2-135M attn", "--ranks", "4", "--dtypes", "fp32", "--repeats", "2"]
                if dry else ["--shapes", "OPT-1.3B mlp", "LLaMA-7B mlp", "--ranks", "4", "8", "32",
                             "--repeats", "10"])
    zo_model = (["--quick", "--repeats", "1", "--warmup", "0"] if dry else
                ["--models", "opt-1.3b", "--dtype", "bf16", "--repeats", "10", "--warmup", "3"])
    steps = [
        Step("build", build, 240, build_env, what="compile _C for this GPU only" if not dry
             else "compile _C without CUDA into a scratch folder"),
        Step("pytest", [py, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider"] + pytest_args,
             240, what="the GPU-marked tests"),
        Step("selftest", [py, "-m", "pgap_kernels.info", "--selftest"], 90,
             what="every backend's self-check on every device"),
        Step("host", [py, "-m", "bench.kernels.host_overhead", "--device", device, "--backends",
                      ",".join(backends), "--repeats", "3" if dry else "20",
                      "--profile", "perturbed"] + (["--small"] if dry else []) + csv("host"), 60,
             what="host time per op while the GPU is busy (no op waits for it)"),
        Step("perturb", [py, "-m", "bench.kernels.perturb", "--device", device, "--dtypes",
                         "fp32,bf16", "--backends", ",".join(backends),
                         "--distributions", "gaussian,rademacher", "--roundings", "nearest,stochastic",
                         "--ops", "perturb_,perturbed"] + perturb
             + csv("perturb") + plot("perturb"), 150,
             what="perturb_ and perturbed GB/s vs copy, eager and add_ (Gaussian and Rademacher "
                  "streams; bf16 stochastic rounding against nearest)"),
        Step("lowrank", [py, "-m", "bench.kernels.lowrank", "--device", device, "--sections",
                         "lowrank", "--backends", *backends, "--no-progress"] + lowrank
             + csv("lowrank") + plot("lowrank"), 90, what="lowrank_perturb_ vs eager"),
        Step("subspace", [py, "-m", "bench.kernels.subspace", "--device", device, "--backends",
                          *backends, "--no-progress"] + subspace + csv("subspace") + plot("subspace"), 90,
             script=BENCH / "kernels" / "subspace.py", what="subspace_perturb_ GB/s vs eager"),
        Step("perturbed", [py, "-m", "bench.kernels.perturbed", "--device", device,
                           "--backends", *backends, "--quick"] + csv("perturbed") + plot("perturbed"),
             90, script=BENCH / "kernels" / "perturbed.py", what="the out-of-place perturbed copy"),
    ]
    for backend in backends:
        steps.append(Step(f"zo_step[{backend}]",
                          [py, "-m", "bench.steps.zo_step", "--device", device, "--methods",
                           "forward", "baseline", "mezo", "mezo-inplace", "--no-probe", "--no-progress"] + zo_model
                          + csv(f"zo_step_{backend}") + plot(f"zo_step_{backend}"), 150,
                          {"PGAP_BACKEND": backend}, what=f"one ZO step, {backend} backend"))
    skipped = set(args.skip)
    return [s for s in steps if s.name not in skipped and s.name.split("[")[0] not in skipped]


def pytest_workers(args: argparse.Namespace) -> int:
    """xdist workers for the pytest step: ``--pytest-workers``, else up to 8 where pytest-xdist
    is installed (a dry run: 1)."""
    if args.pytest_workers is not None:
        return max(1, args.pytest_workers)
    if args.dry_run or importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def run_step(step: Step, env: Dict[str, str], out: Path, remaining: float) -> Outcome:
    log = out / f"{slug(step.name)}.log"
    if step.script is not None and not step.script.exists():
        return Outcome(step.name, "SKIP", 0.0, f"{step.script.name} does not exist yet", "", [])
    timeout = min(step.timeout, remaining)
    if timeout < 10:
        return Outcome(step.name, "SKIP", 0.0, "out of the overall time budget", "", [])
    start = time.perf_counter()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(step.argv) + "\n" + "".join(f"  {k}={v}\n" for k, v in step.env.items()))
        fh.flush()
        try:
            proc = subprocess.run(step.argv, cwd=ROOT, env={**env, **step.env}, stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=timeout)
            rc: Optional[int] = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    targets = [line.strip() for line in text.splitlines() if TARGET_LINE.match(line)]
    tail = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    if rc is None:
        return Outcome(step.name, "TIMEOUT", seconds, f"killed after {timeout:.0f} s", log.name, targets)
    detail = tail[0].strip()[:160] if step.name == "pytest" or rc else step.what
    return Outcome(step.name, "PASS" if rc == 0 else "FAIL", seconds,
                   detail if rc == 0 else f"exit {rc}: {detail}", log.name, targets)


def git_revision() -> str:
    from bench import common  # noqa: PLC0415  (imports torch: only once the GPU check has passed)

    return common.git_revision()


def summary(env: Dict[str, str], outcomes: Sequence[Outcome], dry: bool, total: float) -> str:
    lines = [f"# gpu-check {'(dry run on the CPU) ' if dry else ''}— {env['name']}", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- device: {env['name']} (compute capability {env['arch']})",
             f"- driver: {env['driver']}; CUDA (torch): {env['cuda']}",
             f"- torch {env['torch']}; triton {env['triton']}; python {sys.version.split()[0]}",
             f"- git revision: {git_revision()}",
             f"- total: {total:.0f} s", "",
             "| step | status | seconds | detail | log |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.1f} | {o.detail.replace('|', '/')} | "
                     f"{o.log} |")
    targets = [t for o in outcomes for t in o.targets]
    lines += ["", "## Targets (as the benchmarks printed them)", ""]
    if dry:
        lines += ["A dry run times tiny CPU cases: these lines only show that the reporting works.", ""]
    lines += [f"- {t}" for t in targets] or ["- no target case was measured"]
    return "\n".join(lines) + "\n"


def archive(folder: Path, target: Path) -> Path:
    """Pack ``folder`` (the report) into the gzipped tar ``target``, members under the folder's
    name; returns ``target``. Writes only ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    env_info = cpu_environment() if args.dry_run else cuda_device()
    if env_info is None:
        print("gpu-check: no CUDA GPU is visible to torch here; nothing to run (use --dry-run to "
              "exercise the steps on the CPU)")
        return 0
    day = datetime.date.today().isoformat()
    out = args.out or ROOT / "gpu-report" / f"{day}-{slug(env_info['name'])}"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "python")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["MPLBACKEND"] = "Agg"
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    outcomes: List[Outcome] = []
    start = time.perf_counter()
    try:
        for step in plan(args, env_info, out, scratch):
            remaining = args.budget - (time.perf_counter() - start)
            outcome = run_step(step, env, out, remaining)
            outcomes.append(outcome)
            print(f"gpu-check: {outcome.name:<16} {outcome.status:<7} {outcome.seconds:6.1f} s  "
                  f"{outcome.detail}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = summary(env_info, outcomes, args.dry_run, time.perf_counter() - start)
    (out / "summary.md").write_text(text)
    print(f"\n{text}\ngpu-check: report in {out}")
    if args.archive is not None:
        print(f"gpu-check: report packed into {archive(out, args.archive)}")
    failed = [o for o in outcomes if o.status in ("FAIL", "TIMEOUT")]
    # a dry run's tiny CPU sizes say nothing about the targets: only its steps count
    failed_targets = [] if args.dry_run else [t for o in outcomes for t in o.targets
                                              if t.startswith("FAIL")]
    return 1 if failed or failed_targets else 0


if __name__ == "__main__":
    sys.exit(main())
