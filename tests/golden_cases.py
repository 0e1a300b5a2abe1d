"""The golden trajectories (issue 25): every optimizer in every mode runs a few steps on a tiny
problem; losses, weights and optimizer state are fingerprinted. ``python tests/golden_cases.py
--update`` records tests/golden/trajectories.json (``--cases a/b c/d``: only those, the others
keep their record); ``tests/optimizers/test_golden.py`` replays and compares. Each case records
the platform it was recorded on (CPU and torch): there the comparison is bit for bit.
A redesign that keeps behaviour must leave every fingerprint unchanged."""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "python"))
sys.path.insert(0, str(ROOT))

import pgap  # noqa: E402
from zo_problems import mlp_problem  # noqa: E402

GOLDEN = ROOT / "golden" / "trajectories.json"
STEPS = 4
OPTIMIZERS: Dict[str, Callable[..., Any]] = {
    "mezo": lambda m, **kw: pgap.MeZO(m, lr=1e-2, eps=1e-2, seed=3, **kw),
    "mezo-gv": lambda m, **kw: pgap.MeZOGV(m, lr=1e-2, eps=1e-2, seed=3, **kw),
    "mezo-greedy": lambda m, **kw: pgap.MeZOGreedy(m, lr=1e-2, eps=1e-2, seed=3, **kw),
    "ldsd": lambda m, **kw: pgap.LDSD(m, lr=1e-2, eps=1e-2, seed=3, **kw),
    "agzo": lambda m, **kw: pgap.AGZO(m, lr=1e-2, eps=1e-2, seed=3, rank=2, refresh=2, **kw),
    "pgap-probe": lambda m, **kw: pgap.PGAP(m, lr=1e-2, eps=1e-2, seed=3, rank=2, window=2, probes=2,
                                            subspace="probe", **kw),
    "pgap-activation": lambda m, **kw: pgap.PGAP(m, lr=1e-2, eps=1e-2, seed=3, rank=2, window=2,
                                                 probes=2, subspace="activation", **kw),
    "subzero": lambda m, **kw: pgap.SubZero(m, lr=1e-2, eps=1e-2, seed=3, rank=2, window=2, **kw),
}
SETTINGS = {  # name: (weights dtype, optimizer keyword arguments)
    "fp32-inplace": (torch.float32, {"mode": "inplace"}),
    "fp32-functional": (torch.float32, {"mode": "functional"}),
    "bf16-functional": (torch.bfloat16, {"mode": "functional"}),  # stochastic rounding (default)
    "bf16-inplace-nearest": (torch.bfloat16, {"mode": "inplace", "rounding": "nearest"}),
}


def platform_id() -> str:
    """Where bit-exact fingerprints are comparable: torch's CPU kernels (matmul, reductions)
    differ in their last bits between CPUs and versions; the project's own kernels give the same
    bits on every instruction set, so the one in use is not part of it."""
    return f"{platform.machine()}|{_cpu()}|torch {torch.__version__}"


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fingerprint(t: torch.Tensor) -> Dict[str, Any]:
    """sha256 of the raw bytes (exact) and float64 sum and sum of squares (for tolerance)."""
    t = t.detach().contiguous().cpu()
    raw = t.view(torch.uint8) if t.numel() else t
    x = t.double()
    return {"sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16],
            "sum": float(x.sum()), "sumsq": float((x * x).sum())}


def trajectory(optimizer: str, setting: str) -> Dict[str, Any]:
    """Losses and fingerprints of ``STEPS`` steps, computed on one thread: torch's CPU matmuls
    and reductions round differently with the thread count (OMP_NUM_THREADS)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _trajectory(optimizer, setting)
    finally:
        torch.set_num_threads(threads)


def _trajectory(optimizer: str, setting: str) -> Dict[str, Any]:
    dtype, kwargs = SETTINGS[setting]
    model, closure = mlp_problem(seed=0, dtype=dtype)
    opt = OPTIMIZERS[optimizer](model, **kwargs)
    losses: List[float] = [float(opt.step(closure)) for _ in range(STEPS)]
    state = opt.state_dict()  # merges pending side-path updates first
    return {"losses": losses, "forwards": opt.forwards,
            "weights": {k: fingerprint(v) for k, v in model.state_dict().items()},
            "state": {k: fingerprint(v) for k, v in sorted(state["tensors"].items())}}


def all_trajectories() -> Dict[str, Any]:
    return {f"{o}/{s}": trajectory(o, s) for o in OPTIMIZERS for s in SETTINGS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--update", action="store_true", help=f"write {GOLDEN.relative_to(ROOT.parent)}")
    p.add_argument("--cases", nargs="+", default=None,
                   help="re-record only these cases (optimizer/setting); the others keep their record")
    args = p.parse_args()
    known = [f"{o}/{s}" for o in OPTIMIZERS for s in SETTINGS]
    unknown = sorted(set(args.cases or []) - set(known))
    if unknown:
        p.error(f"--cases: unknown {unknown}; known: {known}")
    here = platform_id()
    cases = {c: dict(trajectory(*c.split("/")), platform=here) for c in (args.cases or known)}
    if args.update:
        old = json.loads(GOLDEN.read_text()) if GOLDEN.exists() and args.cases else {"cases": {}}
        kept = {c: dict(v, platform=v.get("platform", old.get("platform"))) for c, v in old["cases"].items()}
        data = {"steps": STEPS, "cases": dict(kept, **cases)}
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(cases)} trajectories on {here} to {GOLDEN} ({len(data['cases'])} in all)")
    else:
        print(json.dumps(cases, indent=1, sort_keys=True)[:2000])
    return 0

if __name__ == "__main__":
    sys.exit(main())
