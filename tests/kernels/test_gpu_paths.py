"""The GPU paths around the kernels (issue 24): the right device, IEEE float32 under the user's
TF32 setting, no host waits, CUDA-graph capture. GPU-marked; they run in ``make gpu-check``.

The op cases (one representative call of every public op) live in ``bench/kernels/gpu_ops.py``, shared
with ``bench/kernels/host_overhead.py``.
"""
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels import selftest
from pgap_kernels.backends import _device_tables

from conftest import GPU_REASON, HAS_CUDA, require

from bench.kernels import host_overhead as bench_host_overhead
from bench.kernels.gpu_ops import OP_CASES

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=GPU_REASON)]
TWO_GPUS = HAS_CUDA and torch.cuda.device_count() >= 2
TWO_GPU_REASON = "needs two CUDA devices (the cuda:1-with-device-0-current cases)"
BACKENDS = ["cuda", "triton"]
CASES = [pytest.param(c, id=c.name) for c in OP_CASES]


def _clone(x):
    return {k: v.clone() for k, v in x.items()}


def _eager(case, backend, device):
    x = case.make(device, False)
    with pk.use_backend(backend):
        out = case.run(x)
    torch.cuda.synchronize(device)
    return [t.cpu() for t in out]


def _assert_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a.cpu(), e, rtol=0, atol=0, equal_nan=True)


@pytest.fixture
def tf32_on():
    """TF32 allowed for float32 matmuls, as most training scripts set it."""
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    yield
    torch.backends.cuda.matmul.fp32_precision = saved


# -- (5) no host waits; CUDA graphs ------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_no_op_waits_for_the_gpu(backend):
    """With 200 ms of work queued, 20 calls of each op return while the GPU is still busy."""
    require("cuda", backend)
    rows = bench_host_overhead.measure(backend, torch.device("cuda"), busy_ms=200.0, repeats=20)
    waited = [r for r in rows if not r.gpu_busy_after]
    assert not waited, f"these ops waited for the GPU: {waited}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_capture_replays_the_eager_result(backend, case):
    """Warm up, capture one call in a CUDA graph, restore the inputs, replay: the eager result."""
    require("cuda", backend)
    device = torch.device("cuda")
    expected = _eager(case, backend, device)
    x = case.make(device, False)
    original = _clone(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with pk.use_backend(backend), torch.cuda.stream(side):
        case.run(x)  # warm-up, as before any capture: self-check, JIT, launch tables
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with pk.use_backend(backend), torch.cuda.graph(graph):
        out = case.run(x)
    for name, t in x.items():
        t.copy_(original[name])
    graph.replay()
    torch.cuda.synchronize()
    _assert_equal(out, expected)
    assert _device_tables.cache_info()["graph_pinned"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_capture_of_a_call_never_made_before(backend):
    """New seeds inside the capture (launch tables not cached yet): the replay still matches."""
    require("cuda", backend)
    device = torch.device("cuda")
    t = torch.zeros(4099, device=device)
    with pk.use_backend(backend):
        pk.perturb_(t, 1, 1.0)  # self-check and JIT outside the capture
        expected = pk.gaussian(4099, 987654321, key=77, device=device)
    torch.cuda.synchronize()
    t.zero_()
    graph = torch.cuda.CUDAGraph()
    with pk.use_backend(backend), torch.cuda.graph(graph):
        pk.perturb_(t, 987654321, 1.0, keys=[77], decay=0.0)
    t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    _assert_equal([t], [expected.cpu()])


# -- (3) IEEE float32 whatever the user's TF32 setting ----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_self_check_passes_with_tf32_on(backend, tf32_on):
    """The self-check's oracle (reference, torch.mm inside) stays IEEE float32 under TF32."""
    require("cuda", backend)
    result = selftest.run_checks(backend, torch.device("cuda"))
    assert result.passed, result.message()
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # the user's setting is back


def test_reference_lowrank_is_float32_under_tf32(tf32_on):
    """The reference low-rank update against a float64 oracle: float32 accuracy (TF32 would be
    ~1e-3 off), and the user's TF32 setting is left as it was."""
    g = torch.Generator().manual_seed(0)
    W, U, Z, V = (torch.randn(s, generator=g, dtype=torch.float64)
                  for s in ((256, 384), (256, 16), (16, 16), (384, 16)))
    exact = W + 0.5 * U @ Z @ V.T
    Wc = W.float().cuda()
    with pk.use_backend("reference"):
        pk.lowrank_perturb_(Wc, U.float().cuda(), Z.float().cuda(), V.float().cuda(), 0.5)
    scale = float((U.abs() @ Z.abs() @ V.abs().T).max()) * 0.5 + float(W.abs().max())
    assert float((Wc.double().cpu() - exact).abs().max()) < 1e-5 * scale
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


# -- (1), (2) the tensors' device, whichever is current -----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_current_device_and_stream_unchanged(backend):
    """An op leaves torch's current device and stream as they were (one GPU: device 0)."""
    require("cuda", backend)
    before = torch.cuda.current_device()
    stream = torch.cuda.current_stream()
    for case in OP_CASES:
        with pk.use_backend(backend):
            case.run(case.make(torch.device("cuda"), False))
        assert torch.cuda.current_device() == before
        assert torch.cuda.current_stream() == stream


def _make_current_stream(stream: torch.cuda.Stream, current_device: int) -> None:
    """``stream`` becomes its device's current stream; ``current_device`` stays the current device
    (torch.cuda.set_stream also switches the device)."""
    torch.cuda.set_stream(stream)
    torch.cuda.set_device(current_device)


@pytest.mark.skipif(not TWO_GPUS, reason=TWO_GPU_REASON)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_gpu_with_device_0_current(backend, case):
    """Every op on cuda:1 while device 0 is current: the reference result, device 0 still current,
    and the op ordered on cuda:1's current stream: that stream first sleeps, then writes the
    inputs; an op launched anywhere else would read them before they are written."""
    require("cuda", backend)
    dev1 = torch.device("cuda", 1)
    expected = _eager(case, "reference", dev1)
    with pk.use_backend(backend):
        case.run(case.make(dev1, False))  # self-check and JIT on cuda:1 outside the timed part
    x = case.make(dev1, False)
    original = _clone(x)
    for t in x.values():
        t.fill_(float("nan"))
    torch.cuda.synchronize(dev1)
    side = torch.cuda.Stream(device=dev1)
    _make_current_stream(side, 0)
    try:
        with torch.cuda.device(dev1):
            torch.cuda._sleep(100_000_000)  # on `side`
            for name, t in x.items():
                t.copy_(original[name])
        assert torch.cuda.current_device() == 0
        with pk.use_backend(backend):
            out = case.run(x)
        assert torch.cuda.current_device() == 0
        side.synchronize()
    finally:
        _make_current_stream(torch.cuda.default_stream(dev1), 0)
    for a, e in zip(out, expected):
        assert a.device == dev1
        mag = 1.0 + float(e.float().abs().max())
        torch.testing.assert_close(a.float().cpu(), e.float(), rtol=1e-2, atol=1e-5 * mag)


@pytest.mark.skipif(not TWO_GPUS, reason=TWO_GPU_REASON)
@pytest.mark.parametrize("backend", BACKENDS)
def test_self_check_per_device(backend):
    require("cuda", backend)
    torch.cuda.set_device(0)
    for index in range(torch.cuda.device_count()):
        result = selftest.run_checks(backend, torch.device("cuda", index))
        assert result.passed, result.message()
        assert torch.cuda.current_device() == 0


def test_device_tables_are_cached_by_value_and_sign_of_zero():
    """Equal values give the cached table (no new copy); 0.0 and -0.0 are different tables."""
    device = torch.device("cuda")
    a = _device_tables.on_device([[1, 2], [3, 4]], torch.int64, device)
    assert _device_tables.on_device([[1, 2], [3, 4]], torch.int64, device) is a
    pos = _device_tables.on_device([0.0, 1.5], torch.float32, device)
    neg = _device_tables.on_device([-0.0, 1.5], torch.float32, device)
    assert pos is not neg and torch.signbit(neg[0]).item() and not torch.signbit(pos[0]).item()
    torch.testing.assert_close(a.cpu(), torch.tensor([[1, 2], [3, 4]]))
