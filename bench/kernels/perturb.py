"""Benchmark ``pgap_kernels.perturb_`` against the eager PyTorch and MeZO perturbation paths.

What is measured, per (device, dtype, numel) and in one process: the time of ONE in-place
perturbation ``t <- t + eps * z`` of a contiguous 1-D tensor ``t``, with ``z`` standard normal
from a fixed seed (MeZO's ``+eps`` pass), by these paths:

* ``eager``  -- pure PyTorch: ``g.manual_seed(seed); z = torch.randn(n, generator=g, ...);
  t.add_(z, alpha=eps)`` (materialises z, two kernels);
* ``mezo``   -- MeZO's own expression: ``torch.manual_seed(seed); p.data = p.data + scale * eps *
  torch.normal(mean=0, std=1, size=p.data.size(), ...)`` (scale = 1);
* ``add_``   -- the memory yardstick of issue 23: ``t.add_(o)`` with ``o`` a second tensor of the
  same size (no random numbers: what a pass that only moves memory costs);
* ``<backend>`` -- ``pgap_kernels.perturb_(t, seed, eps)`` (decay = 1, one fused pass), once
  per backend in ``pgap_kernels.available_backends(device)``, forced with ``use_backend``; and
  once per ``--distributions`` (``gaussian``, ``rademacher``), ``--roundings`` (``nearest``,
  ``stochastic``: 16-bit dtypes only) and ``--ops`` (``perturb_``; ``perturbed``, the
  out-of-place op, writing into a preallocated ``out``; ``perturbed-bf16``, float32 cases only:
  into a bf16 ``out``, the narrow copy functional views make under bf16 autocast);
* ``cast``   -- float32 cases with ``perturbed-bf16``: ``o16.copy_(t)``, the cast autocast makes
  of a float32 weight per forward (what the narrow copy replaces, with the float32 copy).

Rows carry the op, the distribution and the rounding (CSV columns ``op``, ``distribution``,
``rounding``); ``vs_add`` is a path's median time over the ``add_`` median of the same case
(issue 23's target: <= 2 for ``perturb_``).

Each time is the median of ``--repeats`` calls after ``--warmup`` untimed calls; the paths of a
case are called round-robin (one call of each per round), so drifts in machine load hit them
alike (CPU: wall clock; CUDA: CUDA events). Bandwidth is always counted as
``2 * numel * element_size`` bytes (one read and one write of ``t``) for every path, so rows are
comparable, even though eager and MeZO move more bytes. On a GPU the device's copy bandwidth
(``dst.copy_(src)`` on 1 GiB) is measured once and every row is also reported as a fraction of it.

Results go to a table per case, PASS/FAIL lines for the project's targets (only for cases that
were measured), CSV rows appended to bench/results/perturb.csv and a plot
bench/results/perturb_<device>.png.

Example::

    python -m bench.kernels.perturb --quick --no-csv
    python -m bench.kernels.perturb --device cpu --min-log2 16 --max-log2 26 --step 2
    python -m bench.kernels.perturb --min-log2 26 --max-log2 26 --backends native \
        --distributions gaussian,rademacher --roundings nearest,stochastic
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from bench import common

import pgap_kernels

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16,
                                  "fp16": torch.float16}
EAGER, MEZO, ADD, CAST = "eager", "mezo", "add_", "cast"
LABELS = {EAGER: "eager randn + add_", MEZO: "mezo p.data = p + s*eps*normal",
          ADD: "w.add_(o) (memory yardstick)", CAST: "o16.copy_(w) (autocast's bf16 cast)"}
DISTRIBUTIONS = ("gaussian", "rademacher")
ROUNDINGS = ("nearest", "stochastic")
OPS = ("perturb_", "perturbed", "perturbed-bf16")
NARROW = "perturbed-bf16"  # perturbed into a bf16 out, from float32
SEED = 1234
EPS = 1e-3  # MeZO's default zo_eps
COPY_BYTES = 1 << 30
CPU_TARGET = ("native", torch.float32, 24, 3.0)  # backend, dtype, log2 numel, min speed-up
GPU_TARGET_BACKENDS = ("cuda", "triton")
GPU_TARGET_MIN_BYTES = 256 << 20
GPU_TARGET_COPY_FRACTION = 0.8
GPU_TARGET_SPEEDUP = 2.0
ADD_TARGET = (24, 2.0)  # issue 23: perturb_ (nearest) <= 2x add_ from 2^24 elements
SR_TARGET = (24, 1.15)  # issue 23: stochastic rounding <= 1.15x rounding to nearest, from 2^24
DEFAULT_REPEATS = {"cpu": 10, "cuda": 30}

CASE_FIELDS = ["device", "dtype", "numel", "log2_numel", "path", "warmup", "repeats",
               "median_ms", "min_ms", "iqr_ms", "elements_per_s", "GB_per_s", "speedup_vs_eager",
               "copy_GB_per_s", "fraction_of_copy_bw", "op", "distribution", "rounding", "vs_add"]


@dataclass(frozen=True)
class TimedPath:
    """What one timed call does: ``kind`` is eager, mezo, add_ or a backend; the other fields
    apply to backends (the eager paths draw Gaussians, add_ draws nothing)."""

    kind: str
    op: str = "perturb_"
    distribution: str = "gaussian"
    rounding: str = "nearest"

    @property
    def fused(self) -> bool:
        return self.kind not in LABELS

    @property
    def label(self) -> str:
        if not self.fused:
            return LABELS[self.kind]
        extra = [x for x in (self.distribution, self.rounding) if x not in ("gaussian", "nearest")]
        return " ".join([f"{self.op} [{self.kind}]"] + extra)

    def columns(self) -> Dict[str, str]:
        """The CSV columns op, distribution, rounding."""
        if not self.fused:
            return {"op": "", "distribution": "none" if self.kind in (ADD, CAST) else "gaussian",
                    "rounding": "nearest"}
        return {"op": self.op, "distribution": self.distribution, "rounding": self.rounding}


@dataclass
class Result:
    """One timed path on one case."""

    path: TimedPath
    dtype: torch.dtype
    log2_numel: int
    median_ms: float
    min_ms: float
    iqr_ms: float
    speedup: float = float("nan")
    copy_gbps: Optional[float] = None
    vs_add: float = float("nan")  # median / the add_ median of the case

    @property
    def numel(self) -> int:
        return 1 << self.log2_numel

    @property
    def nbytes(self) -> int:
        """Bytes counted for bandwidth: one read plus one write of the tensor."""
        return 2 * self.numel * self.dtype.itemsize

    @property
    def elements_per_s(self) -> float:
        return self.numel / (self.median_ms * 1e-3)

    @property
    def gbps(self) -> float:
        return self.nbytes / (self.median_ms * 1e-3) / 1e9

    @property
    def copy_fraction(self) -> Optional[float]:
        return None if self.copy_gbps is None else self.gbps / self.copy_gbps


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


EPILOG = """\
Bandwidth (GB/s, 1 GB = 1e9 B) counts 2 * numel * element_size bytes for every path.
Backends not in pgap_kernels.available_backends(device) are skipped, with the reason from
pgap_kernels.backend_status(device). Targets (a PASS/FAIL line only for measured cases):
  CPU: native >= 3x faster than eager at 2^24 fp32 elements;
  GPU: cuda and triton >= 80% of copy bandwidth and >= 2x faster than eager, for tensors
       of >= 256 MiB;
  any device: perturb_ with distribution rademacher (rounded to nearest) <= 2x the time of
       w.add_(o), from 2^24 elements (issue 23);
  any device: perturb_ with rounding stochastic <= 1.15x the same call rounded to nearest
       (16-bit dtypes, per backend and distribution, from 2^24 elements; issue 23), when
       --roundings has both.
"""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device: cpu, cuda or cuda:N (default here: %(default)s; "
                        "cuda when available, else cpu)")
    p.add_argument("--dtypes", nargs="+", default=["fp32,bf16"], metavar="DTYPE",
                   help=f"dtypes, comma- or space-separated, from {', '.join(DTYPES)} "
                        "(default: fp32,bf16)")
    p.add_argument("--min-log2", type=int, default=16,
                   help="smallest size, as log2 of numel (default: %(default)s)")
    p.add_argument("--max-log2", type=int, default=26,
                   help="largest size, as log2 of numel (default: %(default)s)")
    p.add_argument("--step", type=int, default=2,
                   help="step of log2 numel between sizes (default: %(default)s)")
    p.add_argument("--backends", default=None, metavar="NAMES",
                   help="comma-separated perturb_ backends to time (default: every one in "
                        "available_backends(device))")
    p.add_argument("--distributions", default="gaussian", metavar="NAMES",
                   help=f"comma-separated streams to time each backend with, from "
                        f"{', '.join(DISTRIBUTIONS)} (default: %(default)s)")
    p.add_argument("--roundings", default="nearest", metavar="NAMES",
                   help=f"comma-separated roundings, from {', '.join(ROUNDINGS)}; stochastic "
                        f"only for bf16/fp16 (default: %(default)s)")
    p.add_argument("--ops", default="perturb_", metavar="NAMES",
                   help=f"comma-separated ops, from {', '.join(OPS)} (default: %(default)s)")
    p.add_argument("--reference-max-log2", type=int, default=20, metavar="K",
                   help="time the slow pure-PyTorch 'reference' backend (and triton on the CPU "
                        "under TRITON_INTERPRET=1) only up to 2^K elements (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls per path and case before timing (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed calls per path and case; the median is reported "
                        f"(default: {DEFAULT_REPEATS['cpu']} on CPU, {DEFAULT_REPEATS['cuda']} "
                        f"on CUDA)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="call torch.set_num_threads(N) first (default: torch's own choice)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: sizes 2^16..2^20, 3 repeats, 1 warm-up (overrides "
                        "--min-log2, --max-log2, --repeats, --warmup)")
    p.add_argument("--csv", type=Path, default=None, metavar="PATH",
                   help="CSV file to append rows to, created with a header if missing "
                        "(default: bench/results/perturb.csv)")
    p.add_argument("--no-csv", action="store_true", help="do not write CSV rows")
    p.add_argument("--plot", type=Path, default=None, metavar="PATH",
                   help="PNG plot to write (default: bench/results/perturb_<device type>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the plot")
    args = p.parse_args(argv)
    if args.quick:
        args.min_log2, args.max_log2, args.repeats, args.warmup = 16, 20, 3, 1
    if args.step < 1 or args.min_log2 < 0 or args.max_log2 < args.min_log2:
        p.error("need 0 <= --min-log2 <= --max-log2 and --step >= 1")
    names = [d for item in args.dtypes for d in item.split(",") if d]
    unknown = [d for d in names if d not in DTYPES]
    if unknown or not names:
        p.error(f"unknown dtype(s) {unknown}; choose from {', '.join(DTYPES)}")
    args.dtypes = [DTYPES[d] for d in dict.fromkeys(names)]
    for option, allowed in (("distributions", DISTRIBUTIONS), ("roundings", ROUNDINGS),
                            ("ops", OPS)):
        chosen = list(dict.fromkeys(x for x in getattr(args, option).split(",") if x))
        if not chosen or any(x not in allowed for x in chosen):
            p.error(f"--{option}: choose from {', '.join(allowed)}")
        setattr(args, option, chosen)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but torch reports no usable CUDA device")
    if args.csv is None:
        args.csv = common.RESULTS_DIR / "perturb.csv"
    if args.repeats is None:
        args.repeats = DEFAULT_REPEATS.get(args.device.type, 10)
    return args


def select_backends(device: torch.device,
                    requested: Optional[str]) -> Tuple[List[str], Dict[str, str]]:
    """(backends to time, {skipped backend: reason}) for ``device``."""
    status = pgap_kernels.backend_status(device)
    available = pgap_kernels.available_backends(device)
    wanted = list(status) if requested is None else [b.strip() for b in requested.split(",") if b]
    unknown = [b for b in wanted if b not in status]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; choose from {', '.join(status)}")
    chosen = [b for b in available if b in wanted]
    skipped = {b: status[b] or "not available" for b in wanted if b not in available}
    return chosen, skipped


def is_slow(backend: str, device: torch.device) -> bool:
    """Backends capped by --reference-max-log2: pure-PyTorch reference, interpreted triton."""
    return backend == "reference" or (backend == "triton" and device.type == "cpu")


def path_fns(t: torch.Tensor, paths: Sequence[TimedPath]) -> Dict[TimedPath, Callable[[], None]]:
    """A zero-argument callable per path that perturbs ``t`` once by ``EPS * z`` (in place, or
    into a second tensor for ``perturbed``), or adds a second tensor to it (``add_``)."""
    gen = torch.Generator(device=t.device)
    other = torch.zeros_like(t) if any(p.kind == ADD or p.op == "perturbed" for p in paths) else None
    narrow = (torch.zeros_like(t, dtype=torch.bfloat16)
              if any(p.kind == CAST or p.op == NARROW for p in paths) else None)

    def eager() -> None:
        gen.manual_seed(SEED)
        z = torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype)
        t.add_(z, alpha=EPS)

    def mezo() -> None:  # MeZO's efficient_perturb_parameters, verbatim up to names
        scale = 1
        torch.manual_seed(SEED)
        t.data = t.data + scale * EPS * torch.normal(mean=0, std=1, size=t.data.size(),
                                                     device=t.data.device, dtype=t.data.dtype)

    def add() -> None:
        t.add_(other)

    def cast() -> None:
        narrow.copy_(t)

    def fused(path: TimedPath) -> Callable[[], None]:
        rounding = {"rounding": "stochastic", "rounding_seed": SEED} if path.rounding == "stochastic" else {}

        def run() -> None:
            with pgap_kernels.use_backend(path.kind):
                if path.op == "perturbed":
                    pgap_kernels.perturbed(t, SEED, EPS, out=other, distribution=path.distribution)
                elif path.op == NARROW:
                    pgap_kernels.perturbed(t, SEED, EPS, out=narrow, distribution=path.distribution)
                else:
                    pgap_kernels.perturb_(t, SEED, EPS, distribution=path.distribution, **rounding)
        return run

    fns = {EAGER: eager, MEZO: mezo, ADD: add, CAST: cast}
    return {p: fused(p) if p.fused else fns[p.kind] for p in paths}


def copy_bandwidth(device: torch.device, warmup: int, repeats: int) -> float:
    """GB/s of ``dst.copy_(src)`` on a 1 GiB buffer, counting 2 * size bytes."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = common.median(common.time_ms({"copy": lambda: dst.copy_(src)}, device, warmup,
                                      repeats)["copy"])
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


def run_case(dtype: torch.dtype, log2_numel: int, paths: Sequence[TimedPath], args: argparse.Namespace,
             copy_gbps: Optional[float]) -> List[Result]:
    """Time every path, interleaved, on one fresh zero tensor of 2^log2_numel elements."""
    t = torch.zeros(1 << log2_numel, device=args.device, dtype=dtype)
    with torch.no_grad():
        times = common.time_ms(path_fns(t, paths), args.device, args.warmup, args.repeats)
    del t
    results = [Result(p, dtype, log2_numel, common.median(ts), min(ts), common.iqr(ts),
                      copy_gbps=copy_gbps) for p, ts in times.items()]
    eager_ms = common.median(times[TimedPath(EAGER)])
    add_ms = common.median(times[TimedPath(ADD)])
    for r in results:
        r.speedup = eager_ms / r.median_ms
        r.vs_add = r.median_ms / add_ms
    return results


def format_table(device: torch.device, results: Sequence[Result]) -> str:
    """The printed table of one (device, dtype, numel) case."""
    r0 = results[0]
    mib = r0.nbytes / 2 / 2**20
    lines = [f"{device} | {dtype_name(r0.dtype)} | numel 2^{r0.log2_numel} = {r0.numel:,} "
             f"({mib:g} MiB)"]
    head = (f"  {'path':<42}{'median ms':>11}{'IQR %':>7}{'Gelem/s':>9}{'GB/s':>9}"
            f"{'vs eager':>10}{'vs add_':>9}")
    if r0.copy_gbps is not None:
        head += f"{'of copy':>9}"
    lines.append(head)
    for r in results:
        row = (f"  {r.path.label:<42}{r.median_ms:>11.3f}{100 * r.iqr_ms / r.median_ms:>7.1f}"
               f"{r.elements_per_s / 1e9:>9.3f}{r.gbps:>9.2f}{r.speedup:>9.2f}x{r.vs_add:>8.2f}x")
        if r.copy_fraction is not None:
            row += f"{r.copy_fraction:>8.0%} "
        lines.append(row)
    return "\n".join(lines)


def target_lines(device: torch.device, results: Sequence[Result]) -> List[str]:
    """PASS/FAIL lines for the targets whose cases were measured in this run."""
    lines = []
    if device.type == "cpu":
        backend, dtype, log2, need = CPU_TARGET
        for r in results:
            if (r.path, r.dtype, r.log2_numel) == (TimedPath(backend), dtype, log2):
                lines.append(f"{'PASS' if r.speedup >= need else 'FAIL'}  cpu: {backend} is "
                             f"{r.speedup:.2f}x faster than eager at 2^{log2} "
                             f"{dtype_name(dtype)} (target >= {need:g}x)")
    elif device.type == "cuda":
        for r in results:
            gaussian = [TimedPath(b) for b in GPU_TARGET_BACKENDS]
            if r.path not in gaussian or r.nbytes // 2 < GPU_TARGET_MIN_BYTES:
                continue
            case = f"{r.path.kind} at 2^{r.log2_numel} {dtype_name(r.dtype)} ({r.nbytes // 2**21} MiB)"
            frac = r.copy_fraction or 0.0
            lines.append(f"{'PASS' if frac >= GPU_TARGET_COPY_FRACTION else 'FAIL'}  gpu: {case}: "
                         f"{r.gbps:.0f} GB/s = {frac:.0%} of copy bandwidth "
                         f"(target >= {GPU_TARGET_COPY_FRACTION:.0%})")
            lines.append(f"{'PASS' if r.speedup >= GPU_TARGET_SPEEDUP else 'FAIL'}  gpu: {case}: "
                         f"{r.speedup:.2f}x faster than eager (target >= {GPU_TARGET_SPEEDUP:g}x)")
    for r in results:
        if (r.path.fused and r.path.op == "perturb_" and r.path.rounding == "nearest"
                and r.log2_numel >= ADD_TARGET[0]):  # both streams (the Gaussian's misses on CPUs)
            lines.append(f"{'PASS' if r.vs_add <= ADD_TARGET[1] else 'FAIL'}  {device.type}: "
                         f"{r.path.label} at 2^{r.log2_numel} {dtype_name(r.dtype)} takes "
                         f"{r.vs_add:.2f}x the time of add_ (target <= {ADD_TARGET[1]:g}x)")
    nearest = {(r.path.kind, r.path.op, r.path.distribution, r.dtype, r.log2_numel): r
               for r in results if r.path.fused and r.path.rounding == "nearest"}
    for r in results:
        near = nearest.get((r.path.kind, r.path.op, r.path.distribution, r.dtype, r.log2_numel))
        if r.path.fused and r.path.rounding == "stochastic" and near and r.log2_numel >= SR_TARGET[0]:
            ratio = r.median_ms / near.median_ms
            lines.append(f"{'PASS' if ratio <= SR_TARGET[1] else 'FAIL'}  {device.type}: "
                         f"{r.path.label} at 2^{r.log2_numel} {dtype_name(r.dtype)} takes {ratio:.2f}x "
                         f"the time rounded to nearest ({r.median_ms:.3f} / {near.median_ms:.3f} ms, "
                         f"target <= {SR_TARGET[1]:g}x)")
    return lines


def csv_rows(meta: Dict[str, str], device: torch.device, args: argparse.Namespace,
             results: Sequence[Result]) -> List[Dict[str, object]]:
    return [{**meta, "device": str(device), "dtype": dtype_name(r.dtype), "numel": r.numel,
             "log2_numel": r.log2_numel, "path": r.path.kind, **r.path.columns(),
             "vs_add": f"{r.vs_add:.4g}", "warmup": args.warmup,
             "repeats": args.repeats, "median_ms": f"{r.median_ms:.6g}",
             "min_ms": f"{r.min_ms:.6g}", "iqr_ms": f"{r.iqr_ms:.6g}",
             "elements_per_s": f"{r.elements_per_s:.6g}",
             "GB_per_s": f"{r.gbps:.6g}", "speedup_vs_eager": f"{r.speedup:.4g}",
             "copy_GB_per_s": "" if r.copy_gbps is None else f"{r.copy_gbps:.6g}",
             "fraction_of_copy_bw": "" if r.copy_fraction is None else f"{r.copy_fraction:.4g}"}
            for r in results]


def plot(path: Path, device: torch.device, meta: Dict[str, str], dtypes: Sequence[torch.dtype],
         results: Sequence[Result], copy_gbps: Optional[float]) -> None:
    """GB/s vs numel (log2 x axis), one line per path, one panel per dtype; written atomically."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.8), squeeze=False)
    order = list(dict.fromkeys(r.path for r in results))
    for ax, dtype in zip(axes[0], dtypes):
        for name in order:
            rs = sorted((r for r in results if r.dtype == dtype and r.path == name),
                        key=lambda r: r.numel)
            if rs:
                ax.plot([r.numel for r in rs], [r.gbps for r in rs], marker="o",
                        color=f"C{order.index(name) % 10}", label=name.label)
        if copy_gbps is not None:
            ax.axhline(copy_gbps, color="k", ls="--", lw=1, label=f"copy {copy_gbps:.0f} GB/s")
            ax.axhline(GPU_TARGET_COPY_FRACTION * copy_gbps, color="gray", ls=":", lw=1,
                       label=f"{GPU_TARGET_COPY_FRACTION:.0%} of copy")
        logs = sorted({r.log2_numel for r in results if r.dtype == dtype})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([1 << k for k in logs], [f"$2^{{{k}}}$" for k in logs])
        ax.set_xlabel("numel")
        ax.set_ylabel("GB/s  (2 x numel x element size / median)")
        ax.set_title(dtype_name(dtype))
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=9,
               frameon=False)
    hw = (meta["gpu"] if device.type == "cuda"
          else f"{meta['cpu_model']}, {meta['torch_threads']} threads")
    fig.suptitle(f"pgap_kernels.perturb_ on {device} ({hw}), rev {meta['git_rev']}, "
                 f"{meta['timestamp']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if len(names) > 4 else 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def footnotes(args: argparse.Namespace, slow: Sequence[str], skipped: Dict[str, str],
              copy_gbps: Optional[float]) -> List[str]:
    timer = "CUDA events" if args.device.type == "cuda" else "wall clock (time.perf_counter)"
    notes = [f"Times: median of {args.repeats} calls after {args.warmup} warm-up calls, paths "
             f"interleaved round-robin; {timer}; "
             f"eps = {EPS:g}, one seed, decay = 1 (MeZO's +eps pass).",
             "GB/s counts 2 x numel x element size bytes (read + write of the tensor) for every "
             "path, so rows are comparable; eager and mezo actually move more (they materialise "
             "z), add_ too (it reads a second tensor). 1 GB = 1e9 B. 'vs eager' = eager median / "
             "path median; 'vs add_' = path median / add_ median (issue 23: <= 2x). 'IQR %' = "
             "interquartile range of the timed calls / median (a noise gauge)."]
    if slow:
        notes.append(f"{', '.join(slow)} timed only up to 2^{args.reference_max_log2} elements "
                     f"(--reference-max-log2).")
    for name, why in skipped.items():
        notes.append(f"backend {name} skipped: {why}")
    if copy_gbps is not None:
        notes.append(f"'of copy' = GB/s / device copy bandwidth ({copy_gbps:.0f} GB/s, "
                     f"dst.copy_(src) on {COPY_BYTES >> 30} GiB, bytes = 2 x size).")
    return [f"[{i}] {n}" for i, n in enumerate(notes, 1)]


def print_header(meta: Dict[str, str], device: torch.device, backends: Sequence[str],
                 skipped: Dict[str, str], slow: Sequence[str], cap_log2: int) -> None:
    print(f"perturb_ benchmark  rev {meta['git_rev']}  {meta['timestamp']}  "
          f"host {meta['hostname']}")
    print(f"  cpu {meta['cpu_model']} ({meta['cpu_count']} cores, {meta['torch_threads']} torch "
          f"threads, host ISA {meta['host_isa']}, 1-min load {meta['load_avg_1m']}), "
          f"gpu {meta['gpu']}")
    print(f"  torch {meta['torch']} (CUDA {meta['cuda']}), triton {meta['triton']}, "
          f"pgap_kernels {meta['pgap_kernels']}")
    print(f"  device {device}; backends timed: {', '.join(backends) or 'none'}"
          + "".join(f"; skipped {b} ({why})" for b, why in skipped.items()))
    if slow:
        print(f"  {', '.join(slow)}: timed only up to 2^{cap_log2} elements (--reference-max-log2)")


def make_cases(args: argparse.Namespace,
               backends: Sequence[str]) -> List[Tuple[torch.dtype, int, List[TimedPath]]]:
    """(dtype, log2 numel, paths) per case; slow backends only up to --reference-max-log2;
    stochastic rounding only for 16-bit dtypes (float32 results are stored as they are)."""
    cases = []
    for dtype in args.dtypes:
        roundings = [r for r in args.roundings if dtype != torch.float32 or r == "nearest"]
        for k in range(args.min_log2, args.max_log2 + 1, args.step):
            fused = [TimedPath(b, op, dist, rnd) for b in backends for op in args.ops
                     for dist in args.distributions for rnd in roundings
                     if not (is_slow(b, args.device) and k > args.reference_max_log2)
                     and not (op != "perturb_" and rnd == "stochastic")  # perturbed: nearest only
                     and not (op == NARROW and dtype != torch.float32)]  # narrow: from float32
            base = [TimedPath(EAGER), TimedPath(MEZO), TimedPath(ADD)]
            if dtype == torch.float32 and NARROW in args.ops:
                base.append(TimedPath(CAST))
            cases.append((dtype, k, base + fused))
    return cases


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    common.require("bench/kernels/perturb.py", ("tqdm",), plot=not args.no_plot)
    from tqdm import tqdm  # noqa: PLC0415 - after the check

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    meta = common.run_metadata()
    backends, skipped = select_backends(device, args.backends)
    slow = [b for b in backends if is_slow(b, device)]
    print_header(meta, device, backends, skipped, slow, args.reference_max_log2)
    copy_gbps = None
    if device.type == "cuda":
        copy_gbps = copy_bandwidth(device, args.warmup, max(args.repeats, 10))
        print(f"  copy bandwidth: {copy_gbps:.0f} GB/s (dst.copy_(src), {COPY_BYTES >> 30} GiB)")
    print()

    cases = make_cases(args, backends)
    results: List[Result] = []
    with tqdm(total=len(cases), unit="case", desc="perturb") as bar:
        for dtype, k, paths in cases:
            bar.set_postfix_str(f"{dtype_name(dtype)} 2^{k}")
            case = run_case(dtype, k, paths, args, copy_gbps)
            bar.update(1)
            results += case
            bar.write(format_table(device, case) + "\n")
            if not args.no_csv:
                common.append_csv(args.csv, list(meta) + CASE_FIELDS,
                                  csv_rows(meta, device, args, case))

    print("\n".join(footnotes(args, slow, skipped, copy_gbps)))
    print()
    print("\n".join(target_lines(device, results)) or "targets: no target case was measured")
    if not args.no_csv:
        print(f"CSV rows appended to {args.csv}")
    if not args.no_plot:
        common.draw_plot(args.plot or common.RESULTS_DIR / f"perturb_{device.type}.png",
                         lambda out: plot(out, device, meta, args.dtypes, results, copy_gbps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
