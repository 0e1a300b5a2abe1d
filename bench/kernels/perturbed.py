"""What functional mode's perturbed copies cost: one forward through perturbed views, by hook
unit, against a plain forward and against the copy it must make.

Functional mode (``mode="functional"``, the default for bf16/fp16 weights) never writes a
perturbation: every forward sees ``pgap_kernels.perturbed`` copies of the weights, made by hooks
(:class:`pgap.views.PerturbedViews`). The copies themselves must be made: one pass that reads
θ, draws z and writes θ + ε·z for every trainable parameter. Everything beyond that is overhead.

Sections, on a random-init causal LM (``bench.common.build_model``'s configs; nothing is downloaded):

* ``copy``: that pass alone over every trainable parameter, per backend: ``perturbed`` called
  once per tensor (``loop``) against ``perturbed_many`` (one call); ``copy_`` per tensor as the
  memory yardstick.
* ``forward``: the wall time of one forward (synchronized before and after: host time counts),
  ``plain`` and through views with ``unit="block"`` (a decoder layer's parameters in one call)
  and ``unit="module"`` (one call per module owning a parameter). Variants alternate within
  each round; the views are attached (untimed) around their forwards only, and the second
  forward under them is timed (steady state: arena and kept copies allocated). ``calls`` is the number of ``perturbed_many`` calls per forward.

Prints a table and one target line per backend and model: the block views' overhead over a plain
forward is at most 1.25x the ``perturbed_many`` pass ("views cost what they must").

Examples::

    python -m bench.kernels.perturbed --models smollm2-135m --threads 2
    python -m bench.kernels.perturbed --device cuda --backends cuda triton   # OPT-1.3B, bf16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

from bench import common
from bench.common import MODELS, build_model

import pgap_kernels as pk
from pgap.params import collect_trainable
from pgap.views import PerturbedViews

TARGET_OVERHEAD = 1.25  # block views' overhead per forward / one perturbed_many pass
FIELDS = ["section", "device", "model", "params_M", "dtype", "batch", "seq", "backend", "variant",
          "calls", "warmup", "repeats", "median_ms", "min_ms", "iqr_ms", "GB_per_s", "vs_reference",
          "peak_copies_MiB"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SEED, EPS = 12345, 1e-3


def wall_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms, synchronized before and after (host time included)."""
    common.synchronize(device)
    t0 = time.perf_counter()
    fn()
    common.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def rotated_rounds(timers: Dict[str, Callable[[], float]], warmup: int,
                   repeats: int) -> Dict[str, List[float]]:
    """Each timer (a call returning its own ms) once per round, the order rotated each round;
    the first ``warmup`` rounds are dropped."""
    names = list(timers)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            ms = timers[name]()
            if r >= warmup:
                times[name].append(ms)
    return times


def copy_section(model, device: torch.device, backend: str, warmup: int, repeats: int) -> List[dict]:
    """One pass over every trainable: perturbed per tensor, perturbed_many, copy_."""
    ts = collect_trainable(model, None)
    src = [t.param.data for t in ts]
    outs = [torch.empty_like(x) for x in src]
    keys = [t.key for t in ts]

    def loop():
        for x, o, k in zip(src, outs, keys):
            pk.perturbed(x, SEED, EPS, key=k, out=o)

    def many():
        pk.perturbed_many(src, SEED, EPS, keys=keys, out=outs)

    def copy():
        for x, o in zip(src, outs):
            o.copy_(x)

    with pk.use_backend(backend):
        times = rotated_rounds({name: (lambda fn=fn: wall_ms(fn, device)) for name, fn in
                                (("loop", loop), ("perturbed_many", many), ("copy_", copy))},
                               warmup, repeats)
    nbytes = 2 * sum(x.numel() * x.element_size() for x in src)
    calls = {"loop": len(src), "perturbed_many": 1, "copy_": len(src)}
    ref = common.median(times["loop"])
    return [dict(section="copy", variant=v, calls=calls[v], median_ms=common.median(t),
                 min_ms=min(t), iqr_ms=common.iqr(t), GB_per_s=nbytes / common.median(t) / 1e6,
                 vs_reference=ref / common.median(t)) for v, t in times.items()]


def forward_section(model, closure, device: torch.device, backend: str, warmup: int,
                    repeats: int) -> List[dict]:
    """Wall time of one forward: plain, and through views by unit. Each timed forward has only
    its own hooks on the model: the views are attached before it and removed after it, and the
    timed forward is their second (the first allocates the arena and the kept copies, once in
    a run)."""
    ts = collect_trainable(model, None)
    calls: Dict[str, List[int]] = {"plain": [], "block": [], "module": []}
    peaks: Dict[str, int] = {}

    def run(variant: str) -> float:
        if variant == "plain":
            return wall_ms(closure, device)
        views = PerturbedViews(model, ts, unit=variant)
        views.stop_witnessing()
        try:
            views.show([SEED + 1], [EPS])
            closure()
            views.show([SEED], [EPS])
            ms = wall_ms(closure, device)
        finally:
            views.remove()
        calls[variant].append(views.calls // 2)
        peaks[variant] = max(peaks.get(variant, 0), views.peak_bytes)
        return ms

    with pk.use_backend(backend), torch.no_grad():
        times = rotated_rounds({name: (lambda name=name: run(name)) for name in calls}, warmup, repeats)
    ref = common.median(times["plain"])
    return [dict(section="forward", variant=v, calls=max(calls[v], default=0),
                 median_ms=common.median(t), min_ms=min(t), iqr_ms=common.iqr(t), GB_per_s="",
                 vs_reference=common.median(t) / ref,
                 peak_copies_MiB=f"{peaks[v] / 2**20:.1f}" if v in peaks else "")
            for v, t in times.items()]


def targets(rows: Sequence[dict]) -> List[str]:
    lines = []
    for key in sorted({(r["model"], r["backend"]) for r in rows}):
        get = {(r["section"], r["variant"]): r for r in rows if (r["model"], r["backend"]) == key}
        overhead = get["forward", "block"]["median_ms"] - get["forward", "plain"]["median_ms"]
        copy = get["copy", "perturbed_many"]["median_ms"]
        ok = overhead <= TARGET_OVERHEAD * copy
        lines.append(f"{'PASS' if ok else 'FAIL'}: [{key[0]}, {key[1]}] views (block) add "
                     f"{overhead:.2f} ms per forward = {overhead / copy:.2f}x one perturbed_many pass "
                     f"({copy:.2f} ms; target <= {TARGET_OVERHEAD}x); unit=module adds "
                     f"{get['forward', 'module']['median_ms'] - get['forward', 'plain']['median_ms']:.2f} ms")
    return lines


def print_table(rows: Sequence[dict]) -> None:
    print(f"\n{'model':<14}{'backend':<10}{'section':<9}{'variant':<16}{'calls':>6}{'median ms':>11}"
          f"{'iqr':>8}{'GB/s':>8}{'ratio':>8}")
    for r in rows:
        gbs = f"{r['GB_per_s']:.1f}" if r["GB_per_s"] != "" else ""
        print(f"{r['model']:<14}{r['backend']:<10}{r['section']:<9}{r['variant']:<16}{r['calls']:>6}"
              f"{r['median_ms']:>11.2f}{r['iqr_ms']:>8.2f}{gbs:>8}{r['vs_reference']:>8.2f}")
    print("ratio: copy = speed-up over the per-tensor loop; forward = time / plain forward")


def plot(rows: Sequence[dict], path: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    keys = sorted({(r["model"], r["backend"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.8 * len(keys)))
    colors = {"plain": "#999999", "block": "#1f77b4", "module": "#d62728"}
    for y, key in enumerate(keys):
        get = {r["variant"]: r for r in rows if r["section"] == "forward" and (r["model"], r["backend"]) == key}
        for k, variant in enumerate(("plain", "block", "module")):
            ax.barh(y + (k - 1) * 0.27, get[variant]["median_ms"], height=0.25, color=colors[variant],
                    label=variant if y == 0 else None)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([f"{m}\n{b}" for m, b in keys])
    ax.set_xlabel("one forward, ms (wall, host included)")
    ax.set_title("functional-mode forward: plain vs perturbed views by unit")
    ax.legend(loc="lower right")
    common.save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", nargs="+", default=None,
                   help="default: native on the CPU; cuda and triton on a GPU")
    p.add_argument("--models", nargs="+", default=None, choices=MODELS,
                   help="default smollm2-135m on the CPU, opt-1.3b on a GPU (--quick: tiny)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--batch", type=int, default=None, help="default CPU 8, CUDA 16 (--quick: 2)")
    p.add_argument("--seq", type=int, default=None, help="default CPU 35, CUDA 256 (--quick: 16)")
    p.add_argument("--repeats", type=int, default=None, help="default CPU 5, CUDA 20")
    p.add_argument("--warmup", type=int, default=None, help="default CPU 1, CUDA 3")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny model, small batch: a smoke run")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "perturbed.csv")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--plot", type=Path, default=None, help="default bench/results/perturbed_<device>.png")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.backends = args.backends or (["cuda", "triton"] if cuda else ["native"])
    args.models = args.models or (["tiny"] if args.quick else ["opt-1.3b" if cuda else "smollm2-135m"])
    args.batch = args.batch or (2 if args.quick else 16 if cuda else 8)
    args.seq = args.seq or (16 if args.quick else 256 if cuda else 35)
    args.repeats = args.repeats or (2 if args.quick else 20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 3 if cuda else 1)
    args.plot = args.plot or common.RESULTS_DIR / f"perturbed_{'cuda' if cuda else 'cpu'}.png"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common.require("bench/kernels/perturbed.py", ("transformers",), plot=not args.no_plot)
    device, meta = common.start_timing_run(args)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_perturbed: no CUDA device; nothing measured")
        return 0
    dtype = DTYPES[args.dtype]
    rows: List[dict] = []
    for name in args.models:
        model = build_model(name, device, dtype)
        ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq),
                            generator=torch.Generator().manual_seed(0)).to(device)

        def closure():
            return model(input_ids=ids, use_cache=False).logits

        shared = dict(device=str(device), model=name, dtype=args.dtype, batch=args.batch, seq=args.seq,
                      warmup=args.warmup, repeats=args.repeats,
                      params_M=f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}")
        for backend in args.backends:
            for row in (copy_section(model, device, backend, args.warmup, args.repeats)
                        + forward_section(model, closure, device, backend, args.warmup, args.repeats)):
                rows.append({**{f: "" for f in FIELDS}, **shared, "backend": backend, **row})
        del model
    print_table(rows)
    common.print_targets(targets(rows))
    common.write_outputs(args, meta, FIELDS, rows, args.plot, lambda path: plot(rows, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
