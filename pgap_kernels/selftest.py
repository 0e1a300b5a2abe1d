"""Self-check of a backend on a device, run before the library trusts it.

The first time a backend is about to run on a device (chosen automatically, or forced by
:func:`pgap_kernels.use_backend` / ``PGAP_BACKEND``), :func:`check` runs:

* the stream's known-answer vectors (docs/rng.md, "Test vectors"): ξ at nine (seed, key, index)
  triples, the c0→c1 carry and a 10¹² offset included, within the contract's 1e-5·(1 + |ξ|);
* a small parity check against ``reference`` of every op the library provides: ``perturb_``
  (several tensors of odd sizes, two seeds, decay, a mean term), ``perturbed`` (its source
  unchanged; and into outs of another dtype, as functional views copy under autocast),
  ``lowrank_perturb_``, the
  Gaussian sketches (plain and transposed) and ``subspace_perturb_`` (two matrices, one a row
  shard), in float32 and bfloat16, a few hundred elements each;
* stochastic rounding of ``perturb_``, ``lowrank_perturb_`` and ``subspace_perturb_`` into
  bfloat16 and float16, on inputs whose float32 results every backend computes alike: bit for
  bit with ``reference``;
* ``perturb_`` with the Rademacher stream (float32, and bfloat16/float16 rounded
  stochastically), whose exact terms make every backend's results reference's bits.

Every case calls the backend's op functions directly, on argument classes built here
(:mod:`pgap_kernels.args`), through the registry (:mod:`pgap_kernels.backends`): never through
the public ops or the dispatcher, which runs this check.

The result is cached per (backend, device) for the process. ``reference`` is the oracle and is
not self-checked (the test suite checks it against a float64 NumPy oracle). ``PGAP_SELFTEST=0``
turns the check off: a backend that computes wrong numbers is then used silently.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import backends
from .args import (LowrankArgs, PerturbArgs, SketchArgs, SketchProblem, SubspaceArgs,
                   lowrank_factors)
from .testing import XI_TOL, assert_lowrank_close, assert_perturb_close, assert_sketch_close

# docs/rng.md "Test vectors": (seed, key, index, xi to nine decimals).
KNOWN_ANSWERS: Tuple[Tuple[int, int, int, float], ...] = (
    (1234, 0, 0, 1.229155497),
    (1234, 0, 1, -1.616490416),
    (1234, 0, 2, 0.464621076),
    (1234, 0, 3, -1.560540540),
    (1234, 0, 4, 0.743367123),
    (1234, 0, 7, 0.103621948),
    ((1 << 64) - 1, (1 << 32) - 1, (1 << 34) - 2, 1.335703482),
    ((1 << 64) - 1, (1 << 32) - 1, 1 << 34, -0.419864520),
    (0x0123456789ABCDEF, 7, 10 ** 12, -1.571533860),
)

DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.Lock()
_cache: Dict[Tuple[str, str], "CheckResult"] = {}


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one backend's self-check on one device."""

    backend: str
    device: str
    passed: bool
    seconds: float
    cases: int
    op: str = ""       # the first failing op ("" when passed)
    case: str = ""     # its case
    error: str = ""    # what went wrong

    def message(self) -> str:
        """One line naming the backend, device, op, case and error (empty when passed)."""
        if self.passed:
            return ""
        return (f"pgap_kernels backend {self.backend!r} failed its self-check on {self.device}: "
                f"op {self.op}, case {self.case}: {self.error}")


def enabled() -> bool:
    """False when ``PGAP_SELFTEST=0`` (or ``false``/``off``/``no``)."""
    return os.environ.get("PGAP_SELFTEST", "1").strip().lower() not in ("0", "false", "off", "no")


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:<index>`` (the current device when ``device`` has no index)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type if device.index is None else str(device)


def check(backend: str, device: torch.device) -> CheckResult:
    """The (cached) self-check of ``backend`` on ``device``; runs it on first call."""
    key = (backend, device_name(device))
    result = _cache.get(key)
    if result is None:
        with _lock:
            result = _cache.get(key)
            if result is None:
                result = run_checks(backend, torch.device(key[1]))
                _cache[key] = result
    return result


def cached_results() -> List[CheckResult]:
    """Every self-check run so far in this process."""
    return list(_cache.values())


def clear_cache() -> None:
    """Forget every cached result (the next use checks again)."""
    with _lock:
        _cache.clear()


def run_checks(backend: str, device: torch.device) -> CheckResult:
    """Run every case for ``backend`` on ``device`` now (uncached); stops at the first failure.
    Autocast is off for the cases (the first op call may come from inside a user's autocast
    region, e.g. a functional view's copy: its expectations are float32 products)."""
    start = time.perf_counter()
    done = 0
    for case in CASES:
        try:
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                expected = None if case.oracle is None else _compute(case.oracle, "reference", device)
                case.compare(_compute(case.run, backend, device), expected)
        except Exception as exc:  # noqa: BLE001 - any failure of the backend is reported
            error = " ".join(f"{type(exc).__name__}: {exc}".split())
            return CheckResult(backend, device_name(device), False, time.perf_counter() - start,
                               done, case.op, case.name, error[:500])
        done += 1
    return CheckResult(backend, device_name(device), True, time.perf_counter() - start, done)


Run = Callable[[str, torch.device], object]  # a case on (backend, device)


def _compute(fn: Run, backend: str, device: torch.device) -> object:
    out = fn(backend, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


# -- the cases: each returns what is compared with the reference's result ----------------------

def _values(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device, salt: int) -> torch.Tensor:
    """Deterministic, well-spread values in (-1, 1) without touching any RNG."""
    idx = torch.arange(math.prod(shape), dtype=torch.float64)
    return torch.sin(idx * 0.7373 + salt).reshape(shape).to(device=device, dtype=dtype)


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for the checks' tiny matrices, as a broadcast sum: one thread, no BLAS thread pool
    (whose barriers cost milliseconds when other processes load the cores)."""
    return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)


def _perturb_(backend: str, device: torch.device, tensors: List[torch.Tensor], seeds: Sequence[int],
              coeffs: Sequence[float], keys: Sequence[int], offsets: Sequence[int], decay: float,
              means: Optional[List[torch.Tensor]] = None, mean_coeff: float = 0.0,
              rounding_seed: Optional[int] = None, distribution: str = "gaussian") -> None:
    """``perturb_`` on ``backend``: its arguments as the public op passes them to a backend."""
    args = PerturbArgs(tensors, means, list(seeds), list(coeffs), list(keys), list(offsets), decay,
                       mean_coeff, rounding_seed=rounding_seed, distribution=distribution)
    backends.call(backend, backends.PERTURB, device, args)


def _known_answers(backend: str, device: torch.device) -> torch.Tensor:
    """``gaussian(1, seed, key=key, offset=index)``: one element written with decay 0."""
    out = []
    for seed, key, index, _ in KNOWN_ANSWERS:
        t = torch.empty(1, device=device)
        _perturb_(backend, device, [t], [seed], [1.0], [key], [index], 0.0)
        out.append(t.cpu())
    return torch.cat(out)


def _compare_known(actual: torch.Tensor, _expected: object) -> None:
    exact = torch.tensor([x for *_, x in KNOWN_ANSWERS], dtype=torch.float64)
    err = (actual.double() - exact).abs()
    bound = XI_TOL * (1 + exact.abs()) + 1e-9  # the table is rounded to nine decimals
    if bool((err > bound).any()):
        i = int((err > bound).nonzero()[0])
        seed, key, index, value = KNOWN_ANSWERS[i]
        raise AssertionError(f"xi(seed={seed:#x}, key={key}, index={index}) = "
                             f"{float(actual[i]):.9f}, known answer {value:.9f}")


PERTURB_CASES = (((1,), torch.float32), ((3, 5), torch.bfloat16), ((257,), torch.float32),
                 ((129,), torch.bfloat16))
# On a GPU one more tensor (aligned, offset 8, key 13) spans two chunks of the CUDA kernel (4096
# elements, four Philox blocks per thread) and five Triton programs: every thread's later blocks
# and the later chunks are checked. (Not on the CPU, where it would only add to the check's cost.)
GPU_PERTURB_CASE = ((4100,), torch.float32)
PERTURB_SEEDS, PERTURB_COEFFS = [7, (1 << 64) - 3], [0.5, -1.25]


def _perturb(backend: str, device: torch.device) -> List[torch.Tensor]:
    """One call over fp32 and bf16 tensors of odd sizes (two dtype groups)."""
    cases = PERTURB_CASES + ((GPU_PERTURB_CASE,) if device.type == "cuda" else ())
    ts = [_values(s, d, device, p) for p, (s, d) in enumerate(cases)]
    means = [_values(s, d, device, 10 + p) for p, (s, d) in enumerate(cases)]
    keys, offsets = [3, 0xFFFFFFFF, 11, 12, 13], [0, (1 << 32) * 4 - 9, 5, 1 << 40, 8]
    _perturb_(backend, device, ts, PERTURB_SEEDS, PERTURB_COEFFS, keys[:len(cases)],
              offsets[:len(cases)], 0.75, means, 0.5)
    return ts


def _compare_perturb(actual: List[torch.Tensor], expected: List[torch.Tensor]) -> None:
    for a, e in zip(actual, expected):
        assert_perturb_close(a, e, PERTURB_COEFFS + [0.5])


PERTURBED = ((5, 27), torch.bfloat16, 0xFFFFFFFF, (1 << 32) * 4 - 60)  # shape, dtype, key, offset


def _perturbed(backend: str, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The out-of-place pass (2 seeds, a mean term, across the c0 -> c1 carry); returns the
    result and the source, which must be left as it was (:func:`_compare_perturbed`)."""
    shape, dtype, key, offset = PERTURBED
    x, mean = _values(shape, dtype, device, 40), _values(shape, dtype, device, 41)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    args = PerturbArgs([out], [mean], list(PERTURB_SEEDS), list(PERTURB_COEFFS), [key], [offset],
                       1.0, 0.5, sources=[x])
    backends.call(backend, backends.PERTURB, device, args)
    return out, x


def _compare_perturbed(actual: Tuple[torch.Tensor, ...], expected: Tuple[torch.Tensor, ...]) -> None:
    """Out-of-place results, then as many sources: the sources unchanged, the results close."""
    n = len(actual) // 2
    for a, e in zip(actual[n:], expected[n:]):
        if not torch.equal(a.cpu(), e.cpu()):
            raise AssertionError("perturbed wrote its source tensor")
    for a, e in zip(actual[:n], expected[:n]):
        assert_perturb_close(a, e, PERTURB_COEFFS + [0.5])


# the copies of functional views under autocast: sources of one dtype, outs of another
PERTURBED_CAST = ((((5, 27), torch.float32, torch.bfloat16), ((130,), torch.float32, torch.float16),
                   ((3, 50), torch.bfloat16, torch.float32)))


def _perturbed_cast(backend: str, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """Out-of-place passes into another dtype (float32 into bf16 and fp16, bf16 into float32),
    2 seeds, a mean term, across the c0 -> c1 carry; returns the results, then the sources."""
    xs = [_values(shape, src, device, 60 + p) for p, (shape, src, _) in enumerate(PERTURBED_CAST)]
    means = [_values(shape, src, device, 65 + p) for p, (shape, src, _) in enumerate(PERTURBED_CAST)]
    outs = [torch.empty(shape, dtype=out, device=device) for shape, _, out in PERTURBED_CAST]
    args = PerturbArgs(outs, means, list(PERTURB_SEEDS), list(PERTURB_COEFFS), [0xFFFFFFFF, 4, 9],
                       [(1 << 32) * 4 - 60, 3, 128], 1.0, 0.5, sources=xs)
    backends.call(backend, backends.PERTURB, device, args)
    return tuple(outs + xs)


LOWRANK = (37, 29, 3, 2)  # m, n, r, s


def _lowrank_(backend: str, device: torch.device, Ws: List[torch.Tensor],
              factors: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]], decay: float,
              keys: Sequence[int], offsets: Sequence[int], rounding_seed: Optional[int] = None) -> None:
    """``lowrank_perturb_`` on ``backend``: (U, Z, V, scale) per W folded into float32 L, R as the
    public op folds them."""
    lrs = [lowrank_factors(*f) for f in factors]
    args = LowrankArgs(Ws, [lr[0] for lr in lrs], [lr[1] for lr in lrs], decay, list(keys),
                       list(offsets), rounding_seed)
    backends.call(backend, backends.LOWRANK, device, args)


def _lowrank(dtype: torch.dtype) -> Run:
    def body(backend: str, device: torch.device) -> Tuple[torch.Tensor, float]:
        m, n, r, s = LOWRANK
        W = _values((m, n), dtype, device, 1)
        U, Z, V = (_values(shape, torch.float32, device, salt)
                   for shape, salt in (((m, r), 2), ((r, s), 3), ((n, s), 4)))
        scale = 0.3
        magnitude = float(_product(_product(scale * U, Z).abs(), V.abs().T).max())
        _lowrank_(backend, device, [W], [(U, Z, V, scale)], 0.9, [0], [0])
        return W, magnitude
    return body


def _compare_lowrank(actual: Tuple[torch.Tensor, float], expected: Tuple[torch.Tensor, float]) -> None:
    assert_lowrank_close(actual[0], expected[0], expected[1])


SKETCH = (33, 19, 4)  # m, n, q
SKETCH_SEEDS, SKETCH_COEFFS, SKETCH_KEY, SKETCH_OFFSET = [5, 99], [1.0, -0.5], 9, 123


def _sketch_omegas(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    m, n, q = SKETCH
    return _values((n, q), torch.float32, device, 6), _values((m, q), torch.float32, device, 7)


def _sketch(backend: str, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """A @ omega and A.T @ omega' for the implicit Gaussian sum A (both directions)."""
    m, n, _ = SKETCH
    omega, omega_t = _sketch_omegas(device)
    problem = SketchProblem(m, n, SKETCH_KEY, SKETCH_OFFSET)
    return tuple(backends.call(backend, backends.SKETCH, device,
                               SketchArgs([problem], list(SKETCH_SEEDS), list(SKETCH_COEFFS), [w], t))[0]
                 for w, t in ((omega, False), (omega_t, True)))


def _sketch_dense(backend: str, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """The sketches' definition: A materialized by perturb_ (decay 0), then two matmuls (cheaper
    than the reference backend's tiled sketch, which is written for large shapes)."""
    m, n, _ = SKETCH
    A = torch.empty(m, n, device=device)
    _perturb_(backend, device, [A], SKETCH_SEEDS, SKETCH_COEFFS, [SKETCH_KEY], [SKETCH_OFFSET], 0.0)
    omega, omega_t = _sketch_omegas(device)
    return _product(A, omega), _product(A.T, omega_t)


def _compare_sketch(actual: Tuple[torch.Tensor, ...], expected: Tuple[torch.Tensor, ...]) -> None:
    for a, e, omega in zip(actual, expected, _sketch_omegas(torch.device("cpu"))):
        assert_sketch_close(a, e, SKETCH_COEFFS, omega)


SUBSPACE = ((23, 17, 3, torch.float32), (5, 9, 1, torch.bfloat16))  # (m, n, r, dtype); 2nd: a row shard
SUBSPACE_SEEDS, SUBSPACE_COEFFS = [3, (1 << 63) + 1], [0.75, -0.5]


def _subspace_(backend: str, device: torch.device, Ws: List[torch.Tensor], Vs: List[torch.Tensor],
               coeffs: Sequence[float], keys: Sequence[int], offsets: Sequence[int], decay: float,
               rounding_seed: Optional[int] = None) -> None:
    """``subspace_perturb_`` with SUBSPACE_SEEDS on ``backend`` (no empty matrix here)."""
    args = SubspaceArgs(Ws, Vs, list(SUBSPACE_SEEDS), list(coeffs), list(keys), list(offsets), decay,
                        rounding_seed)
    backends.call(backend, backends.SUBSPACE, device, args)


def _subspace(backend: str, device: torch.device) -> Tuple[torch.Tensor, ...]:
    Ws = [_values((m, n), d, device, 20 + p) for p, (m, n, _, d) in enumerate(SUBSPACE)]
    Vs = [_values((n, r), torch.float32, device, 30 + p) for p, (_, n, r, _) in enumerate(SUBSPACE)]
    _subspace_(backend, device, Ws, Vs, SUBSPACE_COEFFS, [4, 0xFFFFFFFE], [0, 7 * SUBSPACE[1][2]],
               0.5)
    return tuple(Ws)


def _compare_subspace(actual: Tuple[torch.Tensor, ...], expected: Tuple[torch.Tensor, ...]) -> None:
    for a, e, (_, n, r, _) in zip(actual, expected, SUBSPACE):
        # |Σ c_j ξ| · Σ_k |V[j, k]| < (Σ|c|)·6·r for the sin-valued V: the scale of the update
        assert_lowrank_close(a, e, sum(abs(c) for c in SUBSPACE_COEFFS) * 6.0 * r)


# -- stochastic rounding: inputs whose float32 results are the same on every backend (no seeds,
# a product exact in float32, or zero coefficients), so the rounded bits must be reference's ---

def _assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal values, and equal bits wherever the value is not zero (the sign of an exact zero sum
    is not part of the contract)."""
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if not torch.equal(a, e):
        raise AssertionError(f"{int((a != e).sum())} of {a.numel()} stochastically rounded values "
                             "differ from reference")
    nonzero = e != 0
    if not torch.equal(a[nonzero].view(torch.int16), e[nonzero].view(torch.int16)):
        raise AssertionError("stochastically rounded bits differ from reference")


def _compare_all_bits(actual, expected) -> None:
    for a, e in zip(actual, expected):
        _assert_same_bits(a, e)


SR_SEED = (1 << 64) - 5


def _perturb_sr(backend: str, device: torch.device) -> List[torch.Tensor]:
    """bf16 and fp16 tensors, decay and a mean term, no seeds, across the rounding counter's carry."""
    cases = (((7, 19), torch.bfloat16), ((150,), torch.float16))
    ts = [_values(s, d, device, 50 + p) for p, (s, d) in enumerate(cases)]
    means = [_values(s, d, device, 60 + p) for p, (s, d) in enumerate(cases)]
    _perturb_(backend, device, ts, [], [], [0xFFFFFFFF, 2], [(1 << 32) * 4 - 70, 9], 0.75, means,
              0.0123, SR_SEED)
    return ts


def _lowrank_sr(backend: str, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """U@Z@V.T of small integers times 2^-10 (exact in float32) added to bf16 and fp16 W."""
    m, n, r, s = LOWRANK
    Ws = [_values((m, n), d, device, 70 + p) for p, d in enumerate((torch.bfloat16, torch.float16))]
    U, Z, V = ((_values(shape, torch.float32, device, salt) * 4).round()
               for shape, salt in (((m, r), 72), ((r, s), 73), ((n, s), 74)))
    _lowrank_(backend, device, Ws, [(U, Z, V, 2.0 ** -10)] * 2, 1.0, [3, 0xFFFFFFFF], [0, 5 * n],
              SR_SEED)
    return tuple(Ws)


def _subspace_sr(backend: str, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """Zero coefficients, decay 0.999: a bf16 matrix and an fp16 row shard (offset 7*r)."""
    Ws = [_values((m, n), d, device, 80 + p)
          for p, (m, n, _, d) in enumerate(((23, 17, 3, torch.bfloat16), (5, 9, 2, torch.float16)))]
    Vs = [_values((17, 3), torch.float32, device, 82), _values((9, 2), torch.float32, device, 83)]
    _subspace_(backend, device, Ws, Vs, [0.0, 0.0], [4, 0xFFFFFFFE], [0, 7 * 2], 0.999, SR_SEED)
    return tuple(Ws)


def _perturb_rademacher(backend: str, device: torch.device) -> List[torch.Tensor]:
    """Rademacher terms (exact): fp32 tensors, and bf16/fp16 ones rounded stochastically (the
    Triton interpreter's bf16 round to nearest truncates), two seeds, decay and a mean term,
    across 128-element blocks and the counter's carry."""
    cases = (((1,), torch.float32), ((3, 50), torch.bfloat16), ((130,), torch.float16),
             ((257,), torch.float32))
    # On a GPU one more (aligned, offset 8) spans two chunks of the CUDA kernel (8192 elements).
    cases += (((8300,), torch.float32),) if device.type == "cuda" else ()
    ts = [_values(s, d, device, 90 + p) for p, (s, d) in enumerate(cases)]
    means = [_values(s, d, device, 95 + p) for p, (s, d) in enumerate(cases)]
    keys, offsets = [5, 0xFFFFFFFF, 6, 7, 8], [3, (1 << 39) - 70, 126, 1 << 40, 8]
    _perturb_(backend, device, ts, PERTURB_SEEDS, PERTURB_COEFFS, keys[:len(cases)],
              offsets[:len(cases)], 0.75, means, 0.5, SR_SEED, "rademacher")
    return ts


_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Case:
    """One self-check case: ``run(backend, device)`` with the checked backend is compared by
    ``compare(actual, expected)`` with ``oracle("reference", device)`` (no oracle: the
    comparison holds fixed known answers)."""

    op: str
    name: str
    run: Run
    compare: Callable[[object, object], None]
    oracle: Optional[Run] = None


CASES: List[Case] = [Case("stream", "known-answer vectors of docs/rng.md", _known_answers, _compare_known)]
CASES += [Case("perturb_", "fp32 and bf16 in one call, sizes 1, 3x5, 257, 129, 2 seeds, decay 0.75, "
               "mean term", _perturb, _compare_perturb, _perturb)]
CASES += [Case("perturbed", "bf16 5x27 from a source that stays unchanged, 2 seeds, mean term, "
               "across the 2^32-block carry", _perturbed, _compare_perturbed, _perturbed)]
CASES += [Case("perturbed", "into another dtype: fp32 5x27 into bf16, fp32 130 into fp16, bf16 3x50 "
               "into fp32, 2 seeds, mean term", _perturbed_cast, _compare_perturbed,
               _perturbed_cast)]
CASES += [Case("lowrank_perturb_", f"{_NAMES[d]} W {LOWRANK[0]}x{LOWRANK[1]}, r {LOWRANK[2]}, "
               f"s {LOWRANK[3]}", _lowrank(d), _compare_lowrank, _lowrank(d)) for d in DTYPES]
CASES += [Case("gaussian_sketch", f"{SKETCH[0]}x{SKETCH[1]}, q {SKETCH[2]}, plain and transposed",
               _sketch, _compare_sketch, _sketch_dense)]
CASES += [Case("subspace_perturb_", "fp32 W 23x17 r 3 and a bf16 row shard 5x9 r 1 in one call, 2 seeds, "
               "decay 0.5", _subspace, _compare_subspace, _subspace)]
CASES += [Case("perturb_", "stochastic rounding: bf16 7x19 and fp16 150, decay 0.75, mean term, "
               "bit for bit", _perturb_sr, _compare_all_bits, _perturb_sr),
          Case("lowrank_perturb_", "stochastic rounding: bf16 and fp16 W 37x29, exact integer "
               "product, bit for bit", _lowrank_sr, _compare_all_bits, _lowrank_sr),
          Case("subspace_perturb_", "stochastic rounding: bf16 W 23x17 and an fp16 row shard 5x9, "
               "decay 0.999, bit for bit", _subspace_sr, _compare_all_bits, _subspace_sr)]
CASES += [Case("perturb_", "Rademacher stream: fp32 1 and 257, bf16 3x50 and fp16 130 rounded "
               "stochastically, 2 seeds, decay 0.75, mean term, bit for bit", _perturb_rademacher,
               _compare_all_bits, _perturb_rademacher)]
