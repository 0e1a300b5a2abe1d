"""Benchmark the low-rank ops against the eager PyTorch paths, side by side in one process.

Four sections, on weight shapes of real models (SmolLM2-135M 576x1536, OPT-1.3B 2048x2048 and
2048x8192, LLaMA-7B 4096x11008, OPT-13B 5120x20480):

* ``lowrank``: one in-place ``W <- W + scale * U @ Z @ V.T`` (U m x r, Z r x r, V n x r) by
  ``eager`` = ``W.add_(U @ Z @ V.T, alpha=scale)``, ``addmm`` = ``W.addmm_(U @ Z, V.T,
  alpha=scale)`` and ``pgap_kernels.lowrank_perturb_`` per backend;
* ``sketch``: ``A @ Omega`` for a 10-seed Gaussian sum A (Omega n x q) by
  ``gaussian_sketch`` per backend and by ``materialize`` = perturb_ into a dense m x n matrix,
  then ``torch.mm``;
* ``rsvd``: the rank-r SVD of a 10-probe implicit ``GaussianSum`` by ``randomized_svd``
  (oversample 10, n_iter 2) and by ``materialize`` + ``torch.svd_lowrank(A, q=r+10, niter=2)``;
* ``rounding``: ``lowrank_perturb_`` of a bfloat16 W (r = 8; 576x1536, 1536x576 and, unless
  ``--quick``, 4096x11008; ``--dtype`` and ``--ranks`` do not apply) with
  ``rounding="stochastic"`` against ``rounding="nearest"``, per backend, at least 30 calls each
  (issue 23's target: stochastic <= 1.3x nearest).

Times are medians of ``--repeats`` calls after ``--warmup`` calls; the paths of a case run
round-robin (CPU: wall clock; CUDA: CUDA events). Peak memory is the memory a call adds on top
of what existed before it (CPU: the process's peak RSS, reset through /proc/self/clear_refs;
CUDA: torch's peak allocated bytes), measured on one extra call per path.

Writes a table per section, PASS/FAIL lines for the project's targets where measured, CSV rows
to bench/results/lowrank.csv and a plot bench/results/lowrank_<device>.png.

Example::

    python -m bench.kernels.lowrank --quick --no-csv --no-plot
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from bench import common
from bench.common import usable_backends

import pgap_kernels as pk
from pgap_kernels.memory import peak_added_bytes

SHAPES: Dict[str, Tuple[int, int]] = {
    "SmolLM2-135M": (576, 1536), "OPT-1.3B attn": (2048, 2048), "OPT-1.3B mlp": (2048, 8192),
    "LLaMA-7B mlp": (4096, 11008), "OPT-13B mlp": (5120, 20480)}
QUICK_SHAPES = ["SmolLM2-135M"]
ROUNDING_SHAPES: Dict[str, Tuple[int, int]] = {
    "SmolLM2-135M": (576, 1536), "SmolLM2-135M up": (1536, 576), "LLaMA-7B mlp": (4096, 11008)}
QUICK_ROUNDING_SHAPES = ["SmolLM2-135M", "SmolLM2-135M up"]
ROUNDING_RANK = 8
RANKS = (8, 64, 128, 256)
SKETCH_QS = (18, 138)
RSVD_RANKS = (8, 128)
RSVD_SHAPES = ["SmolLM2-135M", "OPT-1.3B mlp"]
PROBES = 10
SCALE = 1e-3
TARGET_SHAPE, TARGET_RANK = "OPT-1.3B mlp", 128
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16 tensor cores

FIELDS = ["section", "device", "model", "m", "n", "rank", "dtype", "path", "warmup", "repeats",
          "median_ms", "min_ms", "iqr_ms", "peak_added_MiB", "GFLOP_per_s", "speedup_vs_baseline",
          "fraction_bf16_peak"]


# -- cases -------------------------------------------------------------------------------------
def lowrank_paths(w: torch.Tensor, u, z, v, backends: Sequence[str]) -> Dict[str, Callable[[], None]]:
    paths: Dict[str, Callable[[], None]] = {
        "eager": lambda: w.add_(u @ z @ v.T, alpha=SCALE),
        "addmm": lambda: w.addmm_(u @ z, v.T, alpha=SCALE),
    }
    for b in backends:
        def fused(b=b):
            with pk.use_backend(b):
                pk.lowrank_perturb_(w, u, z, v, SCALE)
        paths[b] = fused
    return paths


def rounding_paths(w: torch.Tensor, u, z, v, backends: Sequence[str]) -> Dict[str, Callable[[], None]]:
    paths: Dict[str, Callable[[], None]] = {}
    for b in backends:
        for rounding in ("nearest", "stochastic"):
            def fused(b=b, rounding=rounding):
                with pk.use_backend(b):
                    pk.lowrank_perturb_(w, u, z, v, SCALE, rounding=rounding, rounding_seed=7)
            paths[f"{b} {rounding}"] = fused
    return paths


def sketch_paths(m, n, omega, seeds, coeffs, backends) -> Dict[str, Callable[[], object]]:
    def materialize():
        a = torch.empty(m, n, device=omega.device)
        pk.perturb_(a, seeds, coeffs, keys=[1], decay=0.0)
        return a @ omega
    paths: Dict[str, Callable[[], object]] = {"materialize": materialize}
    for b in backends:
        def implicit(b=b):
            with pk.use_backend(b):
                return pk.gaussian_sketch(m, n, seeds, coeffs, omega, key=1)
        paths[b] = implicit
    return paths


def rsvd_paths(m, n, rank, seeds, coeffs, device, backends) -> Dict[str, Callable[[], object]]:
    op = pk.GaussianSum(m, n, seeds, coeffs, key=1, device=device)

    def materialize():
        return torch.svd_lowrank(op.materialize(), q=rank + 10, niter=2)
    paths: Dict[str, Callable[[], object]] = {"materialize+svd_lowrank": materialize}
    for b in backends:
        def implicit(b=b):
            with pk.use_backend(b):
                return pk.randomized_svd(op, rank, oversample=10, n_iter=2)
        paths[b] = implicit
    return paths


def measure(section: str, model: str, m: int, n: int, rank: int, dtype: torch.dtype,
            paths: Dict[str, Callable[[], object]], baseline: str, flops: float,
            args: argparse.Namespace, device: torch.device, repeats: Optional[int] = None) -> List[dict]:
    repeats = repeats or args.repeats
    times = common.time_ms(paths, device, args.warmup, repeats)
    rows = []
    base = common.median(times[baseline])
    for name, ts in times.items():
        med = common.median(ts)
        peak = None if args.no_memory else peak_added_bytes(paths[name], device)
        gflops = flops / med / 1e6 if flops else float("nan")
        rows.append({
            "section": section, "device": device.type, "model": model, "m": m, "n": n,
            "rank": rank, "dtype": str(dtype).replace("torch.", ""), "path": name,
            "warmup": args.warmup, "repeats": repeats, "median_ms": f"{med:.4g}",
            "min_ms": f"{min(ts):.4g}", "iqr_ms": f"{common.iqr(ts):.3g}",
            "peak_added_MiB": "" if peak is None else f"{peak / 2**20:.2f}",
            "GFLOP_per_s": f"{gflops:.4g}", "speedup_vs_baseline": f"{base / med:.3g}",
            "fraction_bf16_peak": bf16_fraction(gflops, device) if section == "sketch" else "",
        })
    return rows


def bf16_fraction(gflops: float, device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    return "" if peak is None else f"{gflops / 1e3 / peak:.4f}"


def run(args: argparse.Namespace) -> List[dict]:
    from tqdm import tqdm  # noqa: PLC0415 - after common.require's check

    device = torch.device(args.device)
    shapes = {k: SHAPES[k] for k in (QUICK_SHAPES if args.quick else args.shapes)}
    ranks = (8,) if args.quick else args.ranks
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    g = torch.Generator().manual_seed(0)
    seeds, coeffs = list(range(100, 100 + PROBES)), [1.0 / PROBES] * PROBES
    jobs = []
    if "lowrank" in args.sections:
        jobs += [("lowrank", model, r) for model in shapes for r in ranks]
    if "sketch" in args.sections:
        jobs += [("sketch", model, q) for model in shapes for q in ((18,) if args.quick else SKETCH_QS)]
    if "rsvd" in args.sections:
        jobs += [("rsvd", model, r) for model in shapes
                 if args.quick or model in RSVD_SHAPES for r in ((8,) if args.quick else RSVD_RANKS)]
    if "rounding" in args.sections:
        jobs += [("rounding", model, ROUNDING_RANK)
                 for model in (QUICK_ROUNDING_SHAPES if args.quick else ROUNDING_SHAPES)]
    rows: List[dict] = []
    for section, model, r in tqdm(jobs, desc="bench_lowrank", unit="case", disable=args.no_progress):
        m, n = ROUNDING_SHAPES[model] if section == "rounding" else shapes[model]
        backends = usable_backends(device, m * n, args.backends)
        if section == "rounding":
            w = torch.randn(m, n, generator=g).to(torch.bfloat16).to(device)
            u, z, v = (torch.randn(*s, generator=g).to(torch.bfloat16).to(device) / s[-1] ** 0.5
                       for s in ((m, r), (r, r), (n, r)))
            paths = rounding_paths(w, u, z, v, backends)
            if paths:
                rows += measure(section, model, m, n, r, torch.bfloat16, paths, next(iter(paths)),
                                2.0 * m * n * r, args, device,
                                max(args.repeats, common.ROUNDING_REPEATS))
        elif section == "lowrank":
            w = torch.randn(m, n, generator=g).to(dtype).to(device)
            u, z, v = (torch.randn(*s, generator=g).to(dtype).to(device) / s[-1] ** 0.5
                       for s in ((m, r), (r, r), (n, r)))
            rows += measure(section, model, m, n, r, dtype, lowrank_paths(w, u, z, v, backends),
                            "eager", 2.0 * m * n * r, args, device)
        elif section == "sketch":
            omega = torch.randn(n, r, generator=g).to(device)
            rows += measure(section, model, m, n, r, torch.float32,
                            sketch_paths(m, n, omega, seeds, coeffs, backends), "materialize",
                            2.0 * m * n * r, args, device)
        else:
            rows += measure(section, model, m, n, r, torch.float32,
                            rsvd_paths(m, n, r, seeds, coeffs, device, backends),
                            "materialize+svd_lowrank", 0.0, args, device)
    return rows


# -- output ------------------------------------------------------------------------------------
def format_tables(rows: Sequence[dict]) -> str:
    out = []
    heads = {"lowrank": "W += scale*U@Z@V.T (speed-up vs eager W.add_(U@Z@V.T))",
             "sketch": f"A@Omega, A = sum of {PROBES} seeded Gaussians (speed-up vs materialize+mm)",
             "rsvd": f"rank-r SVD of a {PROBES}-probe GaussianSum (speed-up vs materialize+svd_lowrank)",
             "rounding": "bf16 W += scale*U@Z@V.T, stochastic vs nearest rounding (speed-up vs the "
                         "first backend's nearest)"}
    for section, title in heads.items():
        sec = [r for r in rows if r["section"] == section]
        if not sec:
            continue
        out.append(f"\n== {section}: {title}")
        out.append(f"{'model':<14} {'m x n':>12} {'r/q':>4} {'path':<24} {'median ms':>10} "
                   f"{'speed-up':>8} {'GFLOP/s':>8} {'peak +MiB':>9}")
        for r in sec:
            out.append(f"{r['model']:<14} {r['m']:>5}x{r['n']:<6} {r['rank']:>4} {r['path']:<24} "
                       f"{float(r['median_ms']):>10.3f} {float(r['speedup_vs_baseline']):>7.2f}x "
                       f"{r['GFLOP_per_s'] if r['GFLOP_per_s'] != 'nan' else '':>8} "
                       f"{r['peak_added_MiB']:>9}")
    return "\n".join(out)


def _find(rows, section, model, rank, path) -> Optional[dict]:
    return next((r for r in rows if r["section"] == section and r["model"] == model
                 and r["rank"] == rank and r["path"] == path), None)


def target_lines(rows: Sequence[dict], device: torch.device) -> List[str]:
    """PASS/FAIL for the project's targets, only where the cases were measured."""
    lines = []
    fused = "native" if device.type == "cpu" else "cuda"
    ours = _find(rows, "lowrank", TARGET_SHAPE, TARGET_RANK, fused)
    addmm = _find(rows, "lowrank", TARGET_SHAPE, TARGET_RANK, "addmm")
    if ours and addmm and ours["dtype"] == "float32":
        t_ours, t_addmm = float(ours["median_ms"]), float(addmm["median_ms"])
        speed = float(ours["speedup_vs_baseline"])
        lines.append(f"{'PASS' if t_ours <= t_addmm else 'FAIL'}: lowrank_perturb_ [{fused}] "
                     f"{t_ours:.2f} ms vs addmm_ {t_addmm:.2f} ms at {TARGET_SHAPE}, r={TARGET_RANK} "
                     "(target: at least as fast)")
        lines.append(f"{'PASS' if speed >= 2.0 else 'FAIL'}: lowrank_perturb_ [{fused}] {speed:.2f}x "
                     f"the eager expression at {TARGET_SHAPE}, r={TARGET_RANK} (target >= 2x)")
    for model, (m, n) in ROUNDING_SHAPES.items():
        near = _find(rows, "rounding", model, ROUNDING_RANK, f"{fused} nearest")
        sr = _find(rows, "rounding", model, ROUNDING_RANK, f"{fused} stochastic")
        if near and sr:
            lines.append(common.rounding_target_line(
                "lowrank_perturb_", fused, f"{m}x{n}, r={ROUNDING_RANK}",
                float(near["median_ms"]), float(sr["median_ms"])))
    for r in RSVD_RANKS:
        imp = _find(rows, "rsvd", TARGET_SHAPE, r, fused)
        mat = _find(rows, "rsvd", TARGET_SHAPE, r, "materialize+svd_lowrank")
        if imp and mat:
            t_i, t_m = float(imp["median_ms"]), float(mat["median_ms"])
            lines.append(f"{'PASS' if t_i < t_m else 'FAIL'}: randomized_svd of the implicit sum "
                         f"[{fused}] {t_i:.1f} ms vs materialize+svd_lowrank {t_m:.1f} ms "
                         f"({TARGET_SHAPE}, r={r}; target: faster)")
            if imp["peak_added_MiB"] and mat["peak_added_MiB"]:
                p_i, p_m = float(imp["peak_added_MiB"]), float(mat["peak_added_MiB"])
                lines.append(f"{'PASS' if p_i < 0.1 * p_m else 'FAIL'}: its peak memory "
                             f"{p_i:.1f} MiB vs {p_m:.1f} MiB (target < 10 %)")
    return lines


def plot(path: Path, rows: Sequence[dict], meta: Dict[str, str], device: torch.device) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    sections = [s for s in ("lowrank", "sketch", "rsvd", "rounding") if any(r["section"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(sections), figsize=(6 * len(sections), 4.5), squeeze=False)
    for ax, section in zip(axes[0], sections):
        sec = [r for r in rows if r["section"] == section]
        cases = list(dict.fromkeys((r["model"], r["rank"]) for r in sec))
        paths = list(dict.fromkeys(r["path"] for r in sec))
        width = 0.8 / len(paths)
        for i, p in enumerate(paths):
            found = [_find(sec, section, c[0], c[1], p) for c in cases]
            ys = [float(r["median_ms"]) if r else float("nan") for r in found]
            ax.bar([k + i * width for k in range(len(cases))], ys, width, label=p)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(cases))])
        ax.set_xticklabels([f"{c[0]}\n{'q' if section == 'sketch' else 'r'}={c[1]}" for c in cases],
                           rotation=60, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median time per call (ms, log)")
        ax.set_title(section)
        ax.legend(fontsize=7)
    fig.suptitle(f"pgap_kernels low-rank ops on {device.type} ({meta['cpu_model'] if device.type == 'cpu' else meta['gpu']}, "
                 f"torch {meta['torch']}, {meta['torch_threads']} threads, rev {meta['git_rev']})", fontsize=9)
    common.save_figure(fig, path)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sections", nargs="+", default=["lowrank", "sketch", "rsvd", "rounding"],
                   choices=["lowrank", "sketch", "rsvd", "rounding"])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), metavar="MODEL",
                   help=f"weight shapes by model name (default all: {', '.join(SHAPES)})")
    p.add_argument("--ranks", nargs="+", type=int, default=list(RANKS), help="ranks r of the lowrank section")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="dtype of W, U, Z, V")
    p.add_argument("--backends", nargs="+", default=None, help="backends to time (default: all available)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per path (default CPU 5, CUDA 20)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--quick", action="store_true", help="one small shape, r = 8: a smoke run")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "lowrank.csv")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--plot", type=Path, default=None, help="default bench/results/lowrank_<device>.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 20 if args.device.startswith("cuda") else 5
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    common.require("bench/kernels/lowrank.py", ("tqdm",), plot=not args.no_plot)
    device, meta = common.start_timing_run(args)
    with torch.no_grad():
        rows = run(args)
    print(format_tables(rows))
    common.print_targets(target_lines(rows, device))
    common.write_outputs(args, meta, FIELDS, rows,
                         args.plot or common.RESULTS_DIR / f"lowrank_{device.type}.png",
                         lambda path: plot(path, rows, meta, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
