"""The one helper module of bench/ (kernels/, steps/, experiments/, tools/): dependency checks,
run metadata, timing, CSV output and plots, the backends a benchmark can time, and the
random-init benchmark models (:func:`build_model`)."""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

import pgap_kernels as pk
from pgap._deps import Need, extra_need, plot_or_warn, script_check

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def require(prog: str, modules: Sequence[str] = (), *, plot: bool = False,
            needs: Sequence[Need] = ()) -> None:
    """Call at the start of a benchmark's ``main``, after parsing its arguments and before any
    work: exit with status 2 and one line naming what is missing and ``pip install
    "pgap-kernels[bench]"`` (or the wheels' own command for ``needs``) unless ``modules``,
    matplotlib when ``plot``, and ``needs`` are installed."""
    wanted = [extra_need(f"by {prog}", modules, "bench")] + list(needs)
    if plot:
        wanted.append(extra_need("for the plot", ("matplotlib",), "bench",
                                 hint="--no-plot skips the plot"))
    code = script_check(prog, wanted)
    if code is not None:
        sys.exit(code)


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.strip()


def git_revision() -> str:
    """``git rev-parse --short HEAD``, plus ``-dirty`` if tracked files differ from HEAD.

    Changes under bench/results/ (the benchmarks' own output) do not count as dirty.
    Returns ``"unknown"`` outside a git checkout or without git. ``PGAP_GIT_REVISION`` overrides
    it: a copy of the working tree without ``.git`` (a lent GPU machine) says where it came from.
    """
    if os.environ.get("PGAP_GIT_REVISION"):
        return os.environ["PGAP_GIT_REVISION"]
    try:
        rev = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                     ":(exclude)bench/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("model name", "cpu model", "hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str:
    """Name of CUDA device 0 as torch sees it, or ``"none"``."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def run_metadata() -> Dict[str, str]:
    """Machine, software and revision columns shared by every row of one benchmark run."""
    import pgap_kernels  # noqa: PLC0415
    from pgap_kernels import _native  # noqa: PLC0415
    from pgap_kernels.info import triton_version  # noqa: PLC0415

    return {
        "timestamp": utc_now_iso(),
        "git_rev": git_revision(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": str(os.cpu_count() or 0),
        "torch_threads": str(torch.get_num_threads()),
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "",
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version() or "none",
        "cuda": torch.version.cuda or "none",
        "pgap_kernels": pgap_kernels.__version__,
        "host_isa": str(_native.build_info().get("host_isa", "none")),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


GPU_QUEUE_MS = 50.0  # GPU work queued ahead of each timed round (see time_ms)


def queue_ahead(device: torch.device, ms: float = GPU_QUEUE_MS) -> None:
    """Keep the GPU busy for about ``ms`` (``torch.cuda._sleep``), so the calls the host queues
    meanwhile run back to back on the GPU, whatever their host cost."""
    khz = getattr(torch.cuda.get_device_properties(device), "clock_rate", 0) or 2_000_000
    torch.cuda._sleep(int(khz * ms))


def time_ms(fns: Mapping[str, Callable[[], object]], device: torch.device, warmup: int,
            repeats: int, clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Per-call times in ms of each function in ``fns``, interleaved round-robin.

    First ``warmup`` untimed rounds, then ``repeats`` timed rounds; each round calls every
    function once, in order, so slow drifts of machine load hit all of them alike. On CUDA each
    call is bracketed by CUDA events: GPU time. Each round starts behind GPU_QUEUE_MS of queued
    GPU work (:func:`queue_ahead`), so the host queues the whole round before the GPU reaches
    it: without that, a call whose host cost (validation, dispatch, launch tables: 0.15-0.3 ms
    on an H200's host) exceeds its kernel's time left the GPU idle inside its events, and the
    "GPU time" was the host's. Host time per call is measured by bench/kernels/host_overhead.py. On the
    CPU: ``clock`` (default :func:`time.perf_counter`; :func:`time.thread_time` gives the calling
    thread's CPU time, which a loaded machine disturbs far less, for one-thread runs).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        if device.type == "cuda":
            events = {name: (torch.cuda.Event(enable_timing=True),
                             torch.cuda.Event(enable_timing=True)) for name in fns}
            queue_ahead(device)
            for name, fn in fns.items():
                events[name][0].record()
                fn()
                events[name][1].record()
            torch.cuda.synchronize(device)
            for name, (start, end) in events.items():
                times[name].append(start.elapsed_time(end))
        else:
            for name, fn in fns.items():
                t0 = clock()
                fn()
                times[name].append((clock() - t0) * 1e3)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def iqr(values: Sequence[float]) -> float:
    """Interquartile range (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return float(q3 - q1)


def read_csv_rows(path: Path) -> List[dict]:
    """The rows of the CSV at ``path`` as dicts of strings ([] when there is no file)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_csv(path: Path, fieldnames: Sequence[str], rows: Sequence[Mapping[str, object]]) -> None:
    """Append ``rows`` to the CSV at ``path``, writing the header first if the file is new.

    Raises ``ValueError`` if an existing file has a different header (choose another path).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if header != list(fieldnames):
            raise ValueError(f"{path} has a different header ({len(header)} columns); "
                             "move it away or write elsewhere with --csv PATH")
        new = False
    else:
        new = True
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def save_figure(fig, path: Path) -> None:
    """``tight_layout``, create the folder, write ``path`` as a PNG (110 dpi) and close ``fig``."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(args, meta: Mapping[str, str], fields: Sequence[str],
                  rows: Sequence[Mapping[str, object]], plot_path: Path,
                  plot: Callable[[Path], None]) -> None:
    """Append ``rows`` (with the run metadata) to ``args.csv`` unless ``args.no_csv``, and call
    ``plot(plot_path)`` unless ``args.no_plot`` (last; see :func:`draw_plot`); say where each
    went."""
    if not args.no_csv:
        append_csv(args.csv, list(meta) + list(fields), [{**meta, **r} for r in rows])
        print(f"\nCSV rows appended to {args.csv}")
    if not args.no_plot:
        draw_plot(plot_path, plot)


def write_rows(args, meta: Mapping[str, str], fields: Sequence[str],
               rows: Sequence[Mapping[str, object]]) -> None:
    """:func:`write_outputs` for a bench without a plot: floats to 4 significant digits."""
    args.no_plot = True
    write_outputs(args, meta, fields, [{k: f"{v:.4g}" if isinstance(v, float) else v
                                        for k, v in r.items()} for r in rows], Path(), lambda path: None)


def draw_plot(path: Path, plot: Callable[[Path], None]) -> None:
    """``plot(path)`` and say so; a failure is a warning line (the results are written by now)."""
    if plot_or_warn(Path(sys.argv[0]).name, lambda: plot(path)):
        print(f"plot written to {path}")


def print_targets(lines: Sequence[str]) -> None:
    """Print the PASS/FAIL target lines (if any) after a blank line."""
    if lines:
        print("\n" + "\n".join(lines))


# Issue 23: a bfloat16 update with stochastic rounding costs at most this many times the same
# update rounded to nearest (lowrank_perturb_, subspace_perturb_).
ROUNDING_TARGET = 1.3
ROUNDING_REPEATS = 30  # at least this many interleaved calls per rounding (a ratio of medians)


def rounding_target_line(op: str, backend: str, case: str, nearest_ms: float,
                         stochastic_ms: float) -> str:
    """PASS/FAIL for ROUNDING_TARGET on one case, from the medians of the two roundings."""
    ratio = stochastic_ms / nearest_ms
    return (f"{'PASS' if ratio <= ROUNDING_TARGET else 'FAIL'}: {op} [{backend}] bf16 stochastic / "
            f"nearest rounding {ratio:.2f}x ({stochastic_ms:.3f} / {nearest_ms:.3f} ms) at {case} "
            f"(target <= {ROUNDING_TARGET}x)")


def start_timing_run(args) -> "tuple[torch.device, Dict[str, str]]":
    """Set ``--threads``, pin glibc's mmap threshold on the CPU (for peak-memory readings), and
    print the header line. Returns (device, run metadata)."""
    from pgap_kernels.memory import TIMING_MMAP_THRESHOLD, pin_mmap_threshold  # noqa: PLC0415

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and not pin_mmap_threshold(TIMING_MMAP_THRESHOLD):
        print("warning: could not pin glibc's mmap threshold; CPU peak memory may read low")
    meta = run_metadata()
    print(f"pgap_kernels {meta['pgap_kernels']} rev {meta['git_rev']} | torch {meta['torch']} | "
          f"{meta['cpu_model']} x{meta['cpu_count']} ({meta['torch_threads']} threads, host ISA "
          f"{meta['host_isa']}, load {meta['load_avg_1m']}) | GPU {meta['gpu']} | device {device}")
    return device, meta


# -- backends ------------------------------------------------------------------------------
REFERENCE_MAX_NUMEL = 1 << 21  # the pure-PyTorch backend is timed only up to this size


def usable_backends(device: torch.device, numel: int, requested: Optional[List[str]]) -> List[str]:
    """``requested`` (default: every backend available on ``device``) less those that cannot run
    there, the reference backend beyond :data:`REFERENCE_MAX_NUMEL` elements, and triton on the
    CPU (its interpreter is for tests only)."""
    names = requested or pk.available_backends(device)
    status = pk.backend_status(device)
    return [b for b in names if status[b] is None
            and (b != "reference" or numel <= REFERENCE_MAX_NUMEL)
            and not (b == "triton" and device.type == "cpu")]  # the interpreter is for tests only


# -- models ------------------------------------------------------------------------------------
MODELS = ("smollm2-135m", "opt-1.3b", "tiny")


def model_config(name: str):
    """The transformers config of a benchmark model (random init, no download)."""
    from transformers import LlamaConfig, OPTConfig  # noqa: PLC0415

    if name == "smollm2-135m":
        return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                           num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                           max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5)
    if name == "opt-1.3b":
        return OPTConfig(vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
                         num_attention_heads=32, max_position_embeddings=2048,
                         word_embed_proj_dim=2048, do_layer_norm_before=True)
    if name == "tiny":
        return LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True, rms_norm_eps=1e-5)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The benchmark model ``name`` (:data:`MODELS`), random-initialized from seed 0 on ``device``
    in ``dtype``, in eval mode."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(name))
    model.to(dtype=dtype)
    model.eval()
    return model
