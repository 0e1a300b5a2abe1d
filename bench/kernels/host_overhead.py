"""Host time per op, measured while the GPU is busy: does any op wait for the GPU?

A ZO step queues a forward and then the library's ops. An op that copies its launch tables from
pageable memory, or reads a result back, makes the host wait until everything queued before it
has run: the host cannot queue the next forward early, and the op cannot be captured in a CUDA
graph. Here, per backend and op (the cases of ``bench/kernels/gpu_ops.py``): after warm-up calls (self-check,
Triton JIT, the launch-table cache), the GPU is kept busy with ``torch.cuda._sleep`` for
``--busy-ms``, then the op is called ``--repeats`` times. The host time per call is printed, and
the line says PASS when the GPU was still busy after the last call (no call waited for it) and
FAIL otherwise. On the CPU (``--device cpu``, the dry run) only the host time is measured.

Then functional views' call, ``perturbed_many`` on the 16 tensors of a decoder layer, against
the same call through a prepared :class:`pgap_kernels.PerturbedManyPlan` (validated once; each
call passes only seeds and coefficients): the two are timed in alternating rounds of
``--repeats`` calls (the median over ``--plan-rounds`` rounds), each round behind the busy GPU.

Example::

    python -m bench.kernels.host_overhead --backends cuda,triton
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch

from bench import common
from bench.kernels.gpu_ops import OP_CASES

import pgap_kernels as pk


class HostTime(NamedTuple):
    backend: str
    op: str
    host_us: float          # mean host time per call
    gpu_busy_after: Optional[bool]  # None on the CPU


def measure(backend: str, device: torch.device, busy_ms: float = 200.0, repeats: int = 20,
            small: bool = False) -> List[HostTime]:
    """Host time per call of every op case under ``backend`` on ``device`` (``small``: tiny
    shapes, for the CPU dry run)."""
    rows = []
    with pk.use_backend(backend):
        for case in OP_CASES:
            x = case.make(device, small)
            for _ in range(2):  # warm-up: self-check, JIT, launch-table cache
                case.run(x)
            busy: Optional[bool] = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                common.queue_ahead(device, busy_ms)
            start = time.perf_counter()
            for _ in range(repeats):
                case.run(x)
            host = (time.perf_counter() - start) / repeats
            if device.type == "cuda":
                busy = not torch.cuda.current_stream(device).query()
                torch.cuda.synchronize(device)
            rows.append(HostTime(backend, case.name, host * 1e6, busy))
    return rows


# A decoder layer's trainables (OPT/LLaMA-like): q, k, v, o, fc1, fc2 weights and biases and two
# norms' weights and biases, 16 tensors; hidden size 8 (--small) or 256, bfloat16.
LAYER_SHAPES = [(1, 1), (1,), (1, 1), (1,), (1, 1), (1,), (1, 1), (1,), (4, 1), (4,), (1, 4), (1,),
                (1,), (1,), (1,), (1,)]
PLAN_OPS = ("perturbed_many x16", "PerturbedManyPlan x16")


def plan_calls(device: torch.device, small: bool) -> Dict[str, Callable[[], object]]:
    """One call of each of PLAN_OPS on the same layer of tensors, outs and keys (new seeds and
    coefficients every call, as in a ZO loop)."""
    hidden = 8 if small else 256
    g = torch.Generator().manual_seed(0)
    sources = [torch.randn([d * hidden for d in shape], generator=g).to(device, torch.bfloat16)
               for shape in LAYER_SHAPES]
    outs = [torch.empty_like(t) for t in sources]
    keys = [3 * p + 1 for p in range(len(sources))]
    plan = pk.PerturbedManyPlan(sources, keys=keys, out=outs)
    step = iter(range(1 << 62))

    def call() -> object:
        s = next(step)
        return pk.perturbed_many(sources, [s, s + 1], [1e-3, -1e-3], keys=keys, out=outs)

    def planned() -> object:
        s = next(step)
        return plan([s, s + 1], [1e-3, -1e-3])

    return dict(zip(PLAN_OPS, (call, planned)))


def measure_plan(backend: str, device: torch.device, busy_ms: float = 200.0, repeats: int = 20,
                 small: bool = False, rounds: int = 7) -> List[HostTime]:
    """Host time per call of PLAN_OPS under ``backend``: the median over ``rounds`` alternating
    rounds of ``repeats`` calls each (on CUDA each round behind ``busy_ms`` of queued work; busy
    after: in every round)."""
    calls = plan_calls(device, small)
    times: Dict[str, List[float]] = {op: [] for op in calls}
    busy: Dict[str, Optional[bool]] = {op: None if device.type != "cuda" else True for op in calls}
    with pk.use_backend(backend):
        for fn in calls.values():  # warm-up: self-check, JIT, launch-table cache
            fn(), fn()
        for _ in range(rounds):
            for op, fn in calls.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    common.queue_ahead(device, busy_ms)
                start = time.perf_counter()
                for _ in range(repeats):
                    fn()
                times[op].append((time.perf_counter() - start) / repeats)
                if device.type == "cuda":
                    busy[op] = busy[op] and not torch.cuda.current_stream(device).query()
                    torch.cuda.synchronize(device)
    return [HostTime(backend, op, statistics.median(times[op]) * 1e6, busy[op]) for op in calls]


def profile(backend: str, device: torch.device, op: str, small: bool, calls: int = 200) -> None:
    """Print cProfile's top 25 functions by own time over ``calls`` calls of ``op`` (a name of
    OP_CASES or PLAN_OPS)."""
    import cProfile  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    if op in PLAN_OPS:
        run = plan_calls(device, small)[op]
    else:
        case = next(c for c in OP_CASES if c.name == op)
        x = case.make(device, small)
        def run() -> object:  # noqa: E306
            return case.run(x)
    with pk.use_backend(backend):
        run()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            run()
        prof.disable()
    print(f"\n== cProfile: {calls} calls of {op} under {backend} on {device}")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)


def report(rows: Sequence[HostTime], busy_ms: float, repeats: int) -> List[str]:
    lines = [f"  {'backend':<9} {'op':<21} {'host us/call':>12}  GPU still busy after {repeats} calls"]
    for r in rows:
        busy = "n/a (CPU)" if r.gpu_busy_after is None else ("yes" if r.gpu_busy_after else "NO")
        lines.append(f"  {r.backend:<9} {r.op:<21} {r.host_us:12.1f}  {busy}")
    host = {(r.backend, r.op): r.host_us for r in rows}
    for backend in dict.fromkeys(r.backend for r in rows):
        call, planned = (host.get((backend, op)) for op in PLAN_OPS)
        if call and planned:
            lines.append(f"  {backend}: the plan takes {planned:.1f} us per call, perturbed_many "
                         f"{call:.1f} us ({call / planned:.2f}x)")
    for r in rows:
        if r.gpu_busy_after is None:
            continue
        verdict = "PASS" if r.gpu_busy_after else "FAIL"
        what = ("no call waited for the GPU" if r.gpu_busy_after else
                f"a call waited for the GPU ({busy_ms:.0f} ms of queued work)")
        lines.append(f"{verdict}  host: {r.backend} {r.op}: {r.host_us:.0f} us per call, {what}")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--backends", default="cuda,triton", help="comma-separated")
    p.add_argument("--busy-ms", type=float, default=200.0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--plan-rounds", type=int, default=7,
                   help="alternating rounds of perturbed_many vs PerturbedManyPlan (0: skip them)")
    p.add_argument("--csv", type=Path, default=None, help="write the rows here")
    p.add_argument("--small", action="store_true", help="tiny shapes (the CPU dry run)")
    p.add_argument("--profile", default=None, metavar="OP",
                   help="also print cProfile's top functions (by own time) for 200 calls of OP "
                        f"(e.g. perturbed, or one of {', '.join(map(repr, PLAN_OPS))}) under each "
                        "backend")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_host_overhead: no CUDA device; nothing measured")
        return 0
    print(f"host time per op  rev {common.git_revision()}  {common.utc_now_iso()}  device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    rows = [row for b in args.backends.split(",") if b
            for row in measure(b, device, args.busy_ms, args.repeats, args.small)
            + (measure_plan(b, device, args.busy_ms, args.repeats, args.small, args.plan_rounds)
               if args.plan_rounds > 0 else [])]
    print("\n".join(report(rows, args.busy_ms, args.repeats)))
    if args.profile:
        for b in args.backends.split(","):
            if b:
                profile(b, device, args.profile, args.small)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["device", *HostTime._fields])
            w.writerows([str(device), *r] for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
