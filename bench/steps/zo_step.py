"""Benchmark one zeroth-order optimizer step on causal LMs, split into forward and the rest.

Models are random-init ``transformers`` causal LMs built from configs (nothing is downloaded):
``smollm2-135m`` (the SmolLM2-135M Llama config), ``opt-1.3b`` (the OPT-1.3B config) and a
``tiny`` Llama for ``--quick`` and the smoke test. One model is built at a time and freed
before the next.

On each model and one fixed batch (random token ids; the closure is
``model(input_ids=ids, labels=ids, use_cache=False).loss``, run under ``no_grad``) the methods
are timed one after the other:

* ``forward only``: the closure alone (the reference for the forwards inside a step);
* ``baseline MeZO (eager)``: MeZO's own per-parameter loop (``torch.normal`` per parameter,
  ``param.data = param.data + scale * z * eps``), re-implemented in bench/steps/mezo_baseline.py;
* ``pgap.MeZO``: the fused ``perturb_`` passes;
* ``pgap.PGAP inplace`` / ``pgap.PGAP functional``: a regular (non-probe) P-GAP step. The
  optimizer is built with a window longer than the steps taken, step 0 (the window start: probe
  phase + subspace) is run untimed, then ``--warmup`` untimed and ``--repeats`` timed steps,
  none of which starts a window.

Every step is split by wrapping the closure: forward time = time spent inside the closure
(``time.perf_counter``; on CUDA synchronized before each clock read), non-forward time = step
time - forward time. In functional mode the rank-r side path runs inside the forward, so it is
counted as forward time; the ``fwd/plain`` column (forward time per forward / a plain forward)
shows what it costs there.

The probe phase of P-GAP is timed on its own (section ``probe``): an optimizer with window 1 (so
every step starts a window) runs ``--probe-warmup`` untimed steps (default 0), then
``--probe-repeats`` timed window-start steps; the probe phase itself (merge, ``--probes``
two-sided probes, randomized SVD) is timed by wrapping the optimizer's ``_refresh`` (if that
private method is gone, it is the window-start step minus the median regular step). Its amortized
cost per step is probe time / ``--window``.

Peak memory is what one extra step adds on top of what the process held before it
(``pgap_kernels.memory.peak_added_bytes``: CPU peak RSS, CUDA peak allocated bytes); it
includes the forward's activations (compare with the ``forward only`` row). The probe phase's
peak is that of the untimed step 0 of the regular timing (a window start, the first of its mode).

Prints a table per model, PASS/FAIL lines for the CPU targets (our MeZO non-forward time <= 1/3
of the baseline's; P-GAP functional non-forward share <= 10 % of its step) and the GPU target
(our MeZO's non-forward share <= 10 % of its step; ``PGAP_BACKEND`` picks cuda or triton), appends CSV rows to
bench/results/zo_step.csv and draws bench/results/zo_step_<device>.png.

Example::

    python -m bench.steps.zo_step --quick --no-csv --no-plot
    python -m bench.steps.zo_step --models smollm2-135m --repeats 3 --warmup 1
"""
from __future__ import annotations

import argparse
import gc
import inspect
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from bench import common
from bench.common import MODELS, build_model
from bench.steps.mezo_baseline import MeZOBaseline

import pgap
from pgap_kernels.memory import peak_added_bytes, release_free_memory

DEFAULT_MODELS = ["smollm2-135m", "opt-1.3b"]

FORWARD = "forward only"
BASELINE = "baseline MeZO (eager)"
MEZO = "pgap.MeZO"
MEZO_INPLACE = "pgap.MeZO inplace"
PGAP_INPLACE = "pgap.PGAP inplace"
PGAP_FUNCTIONAL = "pgap.PGAP functional"
METHODS = (FORWARD, BASELINE, MEZO, MEZO_INPLACE, PGAP_INPLACE, PGAP_FUNCTIONAL)
METHOD_KEYS = {"forward": FORWARD, "baseline": BASELINE, "mezo": MEZO, "mezo-inplace": MEZO_INPLACE,
               "pgap-inplace": PGAP_INPLACE, "pgap-functional": PGAP_FUNCTIONAL}
PGAP_MODES = {PGAP_INPLACE: "inplace", PGAP_FUNCTIONAL: "functional"}

TARGET_MEZO_RATIO = 1.0 / 3.0   # our MeZO non-forward time / the baseline's (CPU)
TARGET_FUNCTIONAL_SHARE = 0.10  # P-GAP functional non-forward share of its step (CPU)
TARGET_GPU_SHARE = 0.10         # pgap.MeZO non-forward share of its step (CUDA)

FIELDS = ["section", "device", "model", "params_M", "dtype", "batch", "seq", "attn", "method",
          "rank", "window", "probes", "svd_iters", "warmup", "repeats", "forwards_per_step",
          "step_ms", "step_min_ms", "step_iqr_ms", "forward_ms", "nonforward_ms",
          "nonforward_share", "fwd_vs_plain", "nonforward_vs_baseline", "probe_ms",
          "probe_forward_ms", "probe_nonforward_ms", "amortized_probe_ms", "peak_added_MiB"]


# -- timing ------------------------------------------------------------------------------------
class ForwardTimer:
    """Wraps a closure; accumulates the seconds spent inside it and counts the calls."""

    def __init__(self, fn: Callable[[], torch.Tensor], device: torch.device) -> None:
        self.fn, self.device = fn, device
        self.seconds, self.calls = 0.0, 0

    def __call__(self) -> torch.Tensor:
        common.synchronize(self.device)
        t0 = time.perf_counter()
        out = self.fn()
        common.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def timed_step(opt, timer: ForwardTimer) -> Tuple[float, float, int]:
    """(step seconds, forward seconds, forwards) of one ``opt.step(timer)``."""
    f0, c0 = timer.seconds, timer.calls
    common.synchronize(timer.device)
    t0 = time.perf_counter()
    opt.step(timer)
    common.synchronize(timer.device)
    return time.perf_counter() - t0, timer.seconds - f0, timer.calls - c0


def wrap_refresh(opt, timer: ForwardTimer) -> Optional[List[Tuple[float, float]]]:
    """Time P-GAP's window-start phase (``_refresh``: merge, probes, randomized SVD) by wrapping
    it on the instance; returns the list the (seconds, forward seconds) pairs go to, or None when
    the optimizer has no ``_refresh``."""
    inner = getattr(opt, "_refresh", None)
    if inner is None:
        return None
    record: List[Tuple[float, float]] = []

    def refresh(closure):
        f0 = timer.seconds
        common.synchronize(timer.device)
        t0 = time.perf_counter()
        inner(closure)
        common.synchronize(timer.device)
        record.append((time.perf_counter() - t0, timer.seconds - f0))

    opt._refresh = refresh
    return record


def is_window_start(opt) -> bool:
    window = getattr(opt, "window", None)
    return window is not None and opt.steps_done % window == 0


# -- methods -----------------------------------------------------------------------------------
def pgap_options(args: argparse.Namespace) -> Dict[str, object]:
    opts: Dict[str, object] = {"rank": args.rank, "probes": args.probes}
    if args.svd_iters is not None:
        opts["svd_iters"] = args.svd_iters
    accepted = inspect.signature(pgap.PGAP.__init__).parameters
    dropped = [k for k in opts if k not in accepted]
    if dropped:
        print(f"warning: pgap.PGAP takes no {dropped}; not passed")
    return {k: v for k, v in opts.items() if k in accepted}


def make_optimizer(method: str, model: torch.nn.Module, args: argparse.Namespace, window: int):
    common_kw = {"lr": args.lr, "eps": args.eps, "seed": args.seed}
    if method == BASELINE:
        return MeZOBaseline(model, **common_kw)
    if method == MEZO:
        return pgap.MeZO(model, **common_kw)
    if method == MEZO_INPLACE:  # the default for bf16 is functional (perturbed views)
        return pgap.MeZO(model, mode="inplace", **common_kw)
    return pgap.PGAP(model, window=window, mode=PGAP_MODES[method], **common_kw, **pgap_options(args))


def close(opt) -> None:
    """Functional mode: merge and remove the side-path hooks, so later methods run plain."""
    if hasattr(opt, "close"):
        opt.close()


def bench_forward(closure: Callable[[], torch.Tensor], args, device) -> dict:
    timer = ForwardTimer(closure, device)
    for _ in range(args.warmup):
        timer()
    times = []
    for _ in range(args.repeats):
        s0 = timer.seconds
        timer()
        times.append(timer.seconds - s0)
    peak = None if args.no_memory else peak_added_bytes(closure, device)
    return {"step": times, "fwd": times, "forwards": [1] * len(times), "peak": peak}


def bench_regular(method: str, model, closure, args, device) -> dict:
    """Time ``--repeats`` regular steps after the set-up step (P-GAP) and ``--warmup`` steps."""
    timer = ForwardTimer(closure, device)
    window = regular_window(args)
    opt = make_optimizer(method, model, args, window)
    try:
        probe_peak = None
        if method in PGAP_MODES:
            # step 0 starts the window (probe phase + subspace): untimed; its peak memory is
            # reported as the probe phase's
            if args.no_memory:
                opt.step(timer)
            else:
                probe_peak = peak_added_bytes(lambda: opt.step(timer), device)
        for _ in range(args.warmup):
            opt.step(timer)
        out: Dict[str, list] = {"step": [], "fwd": [], "forwards": []}
        for _ in range(args.repeats):
            if is_window_start(opt):
                raise RuntimeError(f"{method}: timed step {opt.steps_done} starts a window")
            t, f, n = timed_step(opt, timer)
            out["step"].append(t)
            out["fwd"].append(f)
            out["forwards"].append(n)
        peak = None
        if not args.no_memory:
            if is_window_start(opt):
                raise RuntimeError(f"{method}: memory step {opt.steps_done} starts a window")
            peak = peak_added_bytes(lambda: opt.step(timer), device)
        extra = {"window": window, "svd_iters": getattr(opt, "svd_iters", args.svd_iters),
                 "probe_peak": probe_peak} if method in PGAP_MODES else {}
        return dict(out, peak=peak, **extra)
    finally:
        close(opt)


def regular_window(args) -> int:
    """The window of the optimizer timed on regular steps: ``--window``, enlarged if needed so
    that no timed (or memory) step starts a window."""
    return max(args.window, 1 + args.warmup + args.repeats + 1 + 1)


def bench_probe(method: str, model, closure, args, device) -> dict:
    """Time ``--probe-repeats`` window-start steps of a window-1 optimizer (after
    ``--probe-warmup`` untimed ones). No memory step here: the probe phase's peak is taken on the
    regular optimizer's step 0 (see :func:`bench_regular`)."""
    timer = ForwardTimer(closure, device)
    opt = make_optimizer(method, model, args, 1)
    record = wrap_refresh(opt, timer)
    try:
        for _ in range(args.probe_warmup):
            opt.step(timer)
        out: Dict[str, list] = {"step": [], "fwd": [], "forwards": [], "probe": [], "probe_fwd": []}
        for _ in range(args.probe_repeats):
            if record is not None:
                record.clear()
            t, f, n = timed_step(opt, timer)
            out["step"].append(t)
            out["fwd"].append(f)
            out["forwards"].append(n)
            if record:
                out["probe"].append(record[-1][0])
                out["probe_fwd"].append(record[-1][1])
        return dict(out, peak=None, probes=getattr(opt, "probes", args.probes),
                    svd_iters=getattr(opt, "svd_iters", args.svd_iters))
    finally:
        close(opt)


# -- rows --------------------------------------------------------------------------------------
def _ms(values: Sequence[float]) -> List[float]:
    return [v * 1e3 for v in values]


def _fmt(value: Optional[float], spec: str = ".4g") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def step_row(base: dict, method: str, res: dict) -> dict:
    step, fwd = _ms(res["step"]), _ms(res["fwd"])
    nonfwd = [s - f for s, f in zip(step, fwd)]
    step_med, fwd_med, nf_med = common.median(step), common.median(fwd), common.median(nonfwd)
    return dict(base, section="step", method=method,
                forwards_per_step=_fmt(common.median(res["forwards"]), "g"),
                window=res.get("window", ""), step_ms=_fmt(step_med), step_min_ms=_fmt(min(step)),
                step_iqr_ms=_fmt(common.iqr(step), ".3g"), forward_ms=_fmt(fwd_med),
                nonforward_ms=_fmt(nf_med), nonforward_share=_fmt(nf_med / step_med, ".4f"),
                peak_added_MiB="" if res["peak"] is None else f"{res['peak'] / 2**20:.1f}")


def probe_row(base: dict, method: str, res: dict, regular: Optional[dict], window: int) -> dict:
    step, fwd = _ms(res["step"]), _ms(res["fwd"])
    step_med, fwd_med = common.median(step), common.median(fwd)
    if res["probe"]:
        probe_med, probe_fwd = common.median(_ms(res["probe"])), common.median(_ms(res["probe_fwd"]))
    elif regular is not None:  # no _refresh to wrap: window-start step minus a regular step
        probe_med = step_med - float(regular["step_ms"])
        probe_fwd = fwd_med - float(regular["forward_ms"])
    else:
        probe_med = probe_fwd = float("nan")
    return dict(base, section="probe", method=method, window=window, probes=res["probes"],
                svd_iters=_fmt(res["svd_iters"], "g") if res["svd_iters"] is not None else "",
                repeats=len(step), forwards_per_step=_fmt(common.median(res["forwards"]), "g"),
                step_ms=_fmt(step_med), step_min_ms=_fmt(min(step)),
                step_iqr_ms=_fmt(common.iqr(step), ".3g"), forward_ms=_fmt(fwd_med),
                nonforward_ms=_fmt(step_med - fwd_med),
                nonforward_share=_fmt((step_med - fwd_med) / step_med, ".4f"),
                probe_ms=_fmt(probe_med), probe_forward_ms=_fmt(probe_fwd),
                probe_nonforward_ms=_fmt(probe_med - probe_fwd),
                amortized_probe_ms=_fmt(probe_med / window),
                peak_added_MiB="" if res["peak"] is None else f"{res['peak'] / 2**20:.1f}")


def finish_rows(rows: List[dict]) -> None:
    """Fill the columns relating a step row to the plain forward, the baseline and the probe."""
    plain = next((r for r in rows if r["section"] == "step" and r["method"] == FORWARD), None)
    base = next((r for r in rows if r["section"] == "step" and r["method"] == BASELINE), None)
    for r in rows:
        if r["section"] != "step":
            continue
        if plain is not None and r["forwards_per_step"]:
            per_fwd = float(r["forward_ms"]) / float(r["forwards_per_step"])
            r["fwd_vs_plain"] = _fmt(per_fwd / float(plain["forward_ms"]), ".3f")
        if base is not None and r["method"] != FORWARD and float(base["nonforward_ms"]) > 0:
            r["nonforward_vs_baseline"] = _fmt(float(r["nonforward_ms"]) / float(base["nonforward_ms"]), ".4f")
        probe = next((p for p in rows if p["section"] == "probe" and p["method"] == r["method"]), None)
        if probe is not None:
            r["amortized_probe_ms"] = probe["amortized_probe_ms"]


# -- the run -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> List[dict]:
    from tqdm import tqdm  # noqa: PLC0415 - after common.require's check

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    methods = [METHOD_KEYS[k] for k in args.methods]
    pgap_methods = [m for m in methods if m in PGAP_MODES]
    jobs_per_model = 1 + len(methods) + (0 if args.no_probe else len(pgap_methods))
    bar = tqdm(total=jobs_per_model * len(args.models), desc="bench_zo_step", unit="job",
               disable=args.no_progress)
    rows: List[dict] = []
    for name in args.models:
        bar.set_postfix_str(f"{name}: build")
        model = build_model(name, device, dtype)
        bar.update()
        vocab = model.config.vocab_size
        ids = torch.randint(vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed)
                            ).to(device)

        def closure(model=model, ids=ids):
            return model(input_ids=ids, labels=ids, use_cache=False).loss

        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        base = {k: "" for k in FIELDS}
        base.update(device=device.type, model=name, params_M=f"{n_params / 1e6:.2f}",
                    dtype=str(dtype).replace("torch.", ""), batch=args.batch, seq=args.seq,
                    attn=str(getattr(model.config, "_attn_implementation", "")),
                    warmup=args.warmup, repeats=args.repeats)
        model_rows: List[dict] = []
        for method in methods:
            bar.set_postfix_str(f"{name}: {method}")
            if method == FORWARD:
                res = bench_forward(closure, args, device)
            else:
                res = bench_regular(method, model, closure, args, device)
            row = step_row(base, method, res)
            if method in PGAP_MODES:
                row.update(rank=args.rank, probes=args.probes,
                           svd_iters="" if res["svd_iters"] is None else res["svd_iters"])
            model_rows.append(row)
            bar.update()
            if method in PGAP_MODES and not args.no_probe:
                bar.set_postfix_str(f"{name}: {method} probe phase")
                res = dict(bench_probe(method, model, closure, args, device), peak=res["probe_peak"])
                model_rows.append(probe_row(dict(base, rank=args.rank), method, res, row, args.window))
                bar.update()
        finish_rows(model_rows)
        rows += model_rows
        del model, closure, ids
        gc.collect()
        release_free_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    return rows


# -- output ------------------------------------------------------------------------------------
def format_tables(rows: Sequence[dict], args: argparse.Namespace) -> str:
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        first = mine[0]
        steps = [r for r in mine if r["section"] == "step"]
        if steps:
            out.append(f"\n== zo step: one regular step, {name} ({first['params_M']} M params, "
                       f"{first['dtype']}, batch {first['batch']} x seq {first['seq']}, "
                       f"{first['device']}, median of {first['repeats']} after {first['warmup']} warm-up)")
            out.append(f"{'method':<22} {'fwd':>3} {'step ms':>9} {'fwd ms':>9} {'non-fwd ms':>10} "
                       f"{'share':>6} {'fwd/plain':>9} {'nf vs base':>10} {'+probe/W':>8} {'peak +MiB':>9}")
            for r in steps:
                out.append(f"{r['method']:<22} {r['forwards_per_step']:>3} {float(r['step_ms']):>9.2f} "
                           f"{float(r['forward_ms']):>9.2f} {float(r['nonforward_ms']):>10.2f} "
                           f"{100 * float(r['nonforward_share']):>5.1f}% {r['fwd_vs_plain']:>9} "
                           f"{r['nonforward_vs_baseline']:>10} {_cell(r['amortized_probe_ms'], '.2f'):>8} "
                           f"{r['peak_added_MiB']:>9}")
        probes = [r for r in mine if r["section"] == "probe"]
        if probes:
            p = probes[0]
            out.append(f"\n== probe phase: one window-start step, {name} (probes {p['probes']}, rank "
                       f"{p['rank']}, svd_iters {p['svd_iters'] or 'default'}; amortized over window "
                       f"{p['window']})")
            out.append(f"{'method':<22} {'fwd':>3} {'step ms':>10} {'probe ms':>10} {'probe fwd':>10} "
                       f"{'probe non-fwd':>13} {'ms/step':>8} {'peak +MiB':>9}")
            for r in probes:
                out.append(f"{r['method']:<22} {r['forwards_per_step']:>3} {_cell(r['step_ms']):>10} "
                           f"{_cell(r['probe_ms']):>10} {_cell(r['probe_forward_ms']):>10} "
                           f"{_cell(r['probe_nonforward_ms']):>13} {_cell(r['amortized_probe_ms'], '.2f'):>8} "
                           f"{r['peak_added_MiB']:>9}")
    return "\n".join(out)


def _cell(value: str, spec: str = ".1f") -> str:
    """A CSV number re-formatted for a table ('' stays '')."""
    return format(float(value), spec) if value not in ("", None) else ""


def _find(rows, model, method, section="step") -> Optional[dict]:
    return next((r for r in rows if r["model"] == model and r["method"] == method
                 and r["section"] == section), None)


def target_lines(rows: Sequence[dict], device: torch.device) -> List[str]:
    """PASS/FAIL for the targets where the cases were measured: on the CPU, pgap.MeZO's and
    functional P-GAP's non-forward time (INFO lines on other devices); on CUDA, pgap.MeZO's
    overhead over its two forwards: step - 2 x the plain forward (the "forward only" row) as a
    share of the step. In functional mode the perturbation runs inside the forwards, so the
    non-forward time alone would hide it; without the forward-only row, the non-forward share."""
    lines = []

    def verdict(ok: bool) -> str:
        return ("PASS" if ok else "FAIL") if device.type == "cpu" else "INFO"

    for name in dict.fromkeys(r["model"] for r in rows):
        base, ours = _find(rows, name, BASELINE), _find(rows, name, MEZO)
        plain = _find(rows, name, FORWARD)
        for method in (MEZO, MEZO_INPLACE):
            row = _find(rows, name, method)
            if not row or device.type != "cuda":
                continue
            step = float(row["step_ms"])
            if plain:
                over = step - 2 * float(plain["step_ms"])
                what = (f"overhead over two plain forwards {over:.2f} ms = {100 * over / step:.1f} % "
                        f"of its {step:.2f} ms step")
            else:
                over = float(row["nonforward_ms"])
                what = f"non-forward {over:.2f} ms = {100 * over / step:.1f} % of its {step:.2f} ms step"
            lines.append(f"{'PASS' if over <= TARGET_GPU_SHARE * step else 'FAIL'}: [{name}] {method} "
                         f"{what} ({row['dtype']}; GPU target <= 10 %)")
        if base and ours and float(base["nonforward_ms"]) > 0:
            b, o = float(base["nonforward_ms"]), float(ours["nonforward_ms"])
            lines.append(f"{verdict(o <= TARGET_MEZO_RATIO * b)}: [{name}] pgap.MeZO non-forward "
                         f"{o:.2f} ms vs baseline MeZO (eager) {b:.2f} ms = {o / b:.3f} of it "
                         f"(CPU target <= 1/3)")
        func = _find(rows, name, PGAP_FUNCTIONAL)
        if func:
            share = float(func["nonforward_share"])
            extra = f"; its forwards took {func['fwd_vs_plain']}x a plain forward" if func["fwd_vs_plain"] else ""
            if func["amortized_probe_ms"]:
                extra += f"; + {func['amortized_probe_ms']} ms/step amortized probe phase"
            lines.append(f"{verdict(share <= TARGET_FUNCTIONAL_SHARE)}: [{name}] pgap.PGAP functional "
                         f"non-forward {float(func['nonforward_ms']):.2f} ms = {100 * share:.1f} % of "
                         f"its {float(func['step_ms']):.2f} ms step (CPU target <= 10 %{extra})")
    return lines


def plot(path: Path, rows: Sequence[dict], meta: Dict[str, str], device: torch.device) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(dict.fromkeys(r["model"] for r in rows if r["section"] == "step"))
    fig, axes = plt.subplots(1, len(models), figsize=(max(7.0, 5.5 * len(models)), 5.0), squeeze=False)
    for ax, name in zip(axes[0], models):
        steps = [r for r in rows if r["model"] == name and r["section"] == "step" and r["method"] != FORWARD]
        xs = list(range(len(steps)))
        fwd = [float(r["forward_ms"]) for r in steps]
        nf = [max(float(r["nonforward_ms"]), 0.0) for r in steps]
        probe = [float(r["amortized_probe_ms"]) if r["amortized_probe_ms"] else 0.0 for r in steps]
        ax.bar(xs, fwd, 0.6, label="forward", color="#4c72b0")
        ax.bar(xs, nf, 0.6, bottom=fwd, label="non-forward", color="#dd8452")
        if any(probe):
            ax.bar(xs, probe, 0.6, bottom=[a + b for a, b in zip(fwd, nf)], color="#c44e52",
                   hatch="//", alpha=0.6, label="probe phase / window (amortized)")
        totals = [a + b + c for a, b, c in zip(fwd, nf, probe)]
        if totals:
            ax.set_ylim(0, 1.3 * max(totals))  # room for the labels and the legend
        for x, r, total in zip(xs, steps, totals):
            ax.text(x, total, f"{100 * float(r['nonforward_share']):.0f}%", ha="center", va="bottom",
                    fontsize=8)
        plain = _find(rows, name, FORWARD)
        if plain:
            ax.axhline(2 * float(plain["forward_ms"]), color="gray", ls="--", lw=1,
                       label="2 plain forwards")
        ax.set_xticks(xs)
        ax.set_xticklabels([r["method"].replace(" (eager)", "\n(eager)").replace("PGAP ", "PGAP\n")
                            for r in steps], fontsize=8)
        ax.set_ylabel("ms per step (median)")
        first = steps[0] if steps else {"params_M": "?", "dtype": "?", "batch": "?", "seq": "?"}
        ax.set_title(f"{name} ({first['params_M']} M params, {first['dtype']}, batch {first['batch']} x "
                     f"seq {first['seq']}); % = non-forward share", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    where = meta["cpu_model"] if device.type == "cpu" else meta["gpu"]
    fig.suptitle(f"one ZO step: forward vs the rest on {device.type}\n({where}, torch {meta['torch']}, "
                 f"{meta['torch_threads']} threads, rev {meta['git_rev']})", fontsize=9)
    common.save_figure(fig, path)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                   default=None, help=f"comma-separated, from {', '.join(MODELS)} "
                   f"(default {','.join(DEFAULT_MODELS)}; --quick: tiny)")
    p.add_argument("--methods", nargs="+", default=list(METHOD_KEYS), choices=list(METHOD_KEYS),
                   help="methods to time (default all)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default fp32 on CPU, bf16 on CUDA")
    p.add_argument("--batch", type=int, default=None, help="default CPU 4, CUDA 16 (--quick: 2)")
    p.add_argument("--seq", type=int, default=None, help="default CPU 64, CUDA 256 (--quick: 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per method (default CPU 5, CUDA 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default CPU 1, CUDA 3)")
    p.add_argument("--probe-repeats", type=int, default=1, help="timed window-start steps of P-GAP")
    p.add_argument("--probe-warmup", type=int, default=0,
                   help="untimed window-start steps before them (default 0: the regular timing's "
                   "step 0 has already run the same code on the same model)")
    p.add_argument("--rank", type=int, default=8, help="P-GAP rank")
    p.add_argument("--window", type=int, default=100, help="P-GAP window (the probe phase is amortized over it)")
    p.add_argument("--probes", type=int, default=10, help="P-GAP probes per window")
    p.add_argument("--svd-iters", type=int, default=None, help="P-GAP randomized-SVD power iterations "
                   "(default: pgap.PGAP's own)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--quick", action="store_true", help="tiny model, small batch: a smoke run")
    p.add_argument("--no-probe", action="store_true", help="skip the P-GAP probe-phase timing")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory steps")
    p.add_argument("--csv", type=Path, default=common.RESULTS_DIR / "zo_step.csv")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--plot", type=Path, default=None, help="default bench/results/zo_step_<device>.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.models is None:
        args.models = ["tiny"] if args.quick else list(DEFAULT_MODELS)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if args.dtype is None:
        args.dtype = "bf16" if cuda else "fp32"
    if args.batch is None:
        args.batch = 2 if args.quick else (16 if cuda else 4)
    if args.seq is None:
        args.seq = 32 if args.quick else (256 if cuda else 64)
    if args.repeats is None:
        args.repeats = 20 if cuda else 5
    if args.warmup is None:
        args.warmup = 3 if cuda else 1
    for name in ("batch", "seq", "repeats", "probe_repeats", "window", "probes", "rank"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.probe_warmup < 0:
        p.error("--warmup and --probe-warmup must be >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    common.require("bench/steps/zo_step.py", ("tqdm", "transformers"), plot=not args.no_plot)
    device, meta = common.start_timing_run(args)
    window = regular_window(args)
    print(f"models {','.join(args.models)} | {args.dtype} | batch {args.batch} x seq {args.seq} | "
          f"repeats {args.repeats}, warm-up {args.warmup} | P-GAP rank {args.rank}, probes {args.probes}, "
          f"window {args.window}" + (f" (regular steps timed with window {window})" if window != args.window else ""))
    with torch.no_grad():
        rows = run(args)
    print(format_tables(rows, args))
    common.print_targets(target_lines(rows, device))
    common.write_outputs(args, meta, FIELDS, rows,
                         args.plot or common.RESULTS_DIR / f"zo_step_{device.type}.png",
                         lambda path: plot(path, rows, meta, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
