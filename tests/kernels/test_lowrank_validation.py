"""Bad arguments to the low-rank ops raise TypeError/ValueError before anything is modified;
sketches of implicit sums need far less memory than the materialized matrix."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import pgap_kernels as pk


def good():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)
    return w, torch.randn(6, 3, generator=g), torch.randn(3, 2, generator=g), torch.randn(5, 2, generator=g)


def bad_lowrank_cases():
    w, u, z, v = good()
    meta = torch.device("meta")
    return [
        ("U rows", lambda: ([w], [u[:5]], [z], [v], 1.0, {}), ValueError, "shape mismatch"),
        ("V rows", lambda: ([w], [u], [z], [v[:4]], 1.0, {}), ValueError, "shape mismatch"),
        ("Z inner", lambda: ([w], [u], [z[:2]], [v], 1.0, {}), ValueError, "shape mismatch"),
        ("Z cols", lambda: ([w], [u], [z], [v[:, :1]], 1.0, {}), ValueError, "shape mismatch"),
        ("zero rank", lambda: ([w], [u[:, :0]], [z[:0]], [v], 1.0, {}), ValueError, "at least 1"),
        ("W 1-D", lambda: ([w[0]], [u], [z], [v], 1.0, {}), ValueError, "2-D"),
        ("W int", lambda: ([w.int()], [u], [z], [v], 1.0, {}), TypeError, "dtype"),
        ("W float64", lambda: ([w.double()], [u], [z], [v], 1.0, {}), TypeError, "dtype"),
        ("U float64", lambda: ([w], [u.double()], [z], [v], 1.0, {}), TypeError, "U"),
        ("W strided", lambda: ([w.T], [u[:5]], [z], [torch.randn(6, 2)], 1.0, {}), ValueError, "contiguous"),
        ("U device", lambda: ([w], [u.to(meta)], [z], [v], 1.0, {}), ValueError, "device"),
        ("lengths", lambda: ([w, w.clone()], [u], [z, z], [v, v], 1.0, {}), ValueError, "U has 1"),
        ("scale len", lambda: ([w], [u], [z], [v], [1.0, 2.0], {}), ValueError, "scale"),
        ("scale nan", lambda: ([w], [u], [z], [v], float("nan"), {}), ValueError, "finite"),
        ("scale str", lambda: ([w], [u], [z], [v], "1", {}), TypeError, "scale"),
        ("decay inf", lambda: ([w], [u], [z], [v], 1.0, {"decay": float("inf")}), ValueError, "decay"),
        ("duplicate", lambda: ([w, w], [u, u], [z, z], [v, v], 1.0, {}), ValueError, "twice"),
        ("not tensor", lambda: ([w.tolist()], [u], [z], [v], 1.0, {}), TypeError, "W"),
    ]


@pytest.mark.parametrize("case", bad_lowrank_cases(), ids=lambda c: c[0])
def test_lowrank_bad_arguments_leave_w_untouched(case):
    _, make, exc, match = case
    ws, us, zs, vs, scale, kwargs = make()
    before = [w.clone() if isinstance(w, torch.Tensor) else w for w in ws]
    with pytest.raises(exc, match=match):
        pk.lowrank_perturb_(ws, us, zs, vs, scale, **kwargs)
    for w, b in zip(ws, before):
        if isinstance(w, torch.Tensor):
            assert torch.equal(w, b)


def test_single_w_needs_single_factors():
    w, u, z, v = good()
    with pytest.raises(TypeError, match="single"):
        pk.lowrank_perturb_(w, [u], z, v, 1.0)


@pytest.mark.parametrize("call,exc,match", [
    (lambda om: pk.gaussian_sketch(6, 5, 1, 1.0, om[:4]), ValueError, "rows"),
    (lambda om: pk.gaussian_sketch(6, 5, 1, 1.0, om, transpose=True), ValueError, "rows"),
    (lambda om: pk.gaussian_sketch(6, 5, [1, 2], [1.0], om), ValueError, "equal lengths"),
    (lambda om: pk.gaussian_sketch(6, 5, -1, 1.0, om), ValueError, "seeds"),
    (lambda om: pk.gaussian_sketch(6, 5, 1 << 64, 1.0, om), ValueError, "seeds"),
    (lambda om: pk.gaussian_sketch(6, 5, 1, float("inf"), om), ValueError, "finite"),
    (lambda om: pk.gaussian_sketch(6, 5, 1, 1.0, om, key=1 << 32), ValueError, "key"),
    (lambda om: pk.gaussian_sketch(6, 5, 1, 1.0, om, offset=-1), ValueError, "offset"),
    (lambda om: pk.gaussian_sketch(-1, 5, 1, 1.0, om), ValueError, "m"),
    (lambda om: pk.gaussian_sketch(6, 5, 1, 1.0, om.int()), TypeError, "dtype"),
    (lambda om: pk.gaussian_sketch(6, 5, 1, 1.0, om[0]), ValueError, "2-D"),
    (lambda om: pk.gaussian_sketch(6, 5, 1, 1.0, om, transpose=1), TypeError, "transpose"),
    (lambda om: pk.gaussian_sketch_batch([(6, 5)], 1, 1.0, [om, om]), ValueError, "omegas has 2"),
    (lambda om: pk.gaussian_sketch_batch([(6, 5), (6, 5)], 1, 1.0, [om, om.to("meta")]), ValueError, "device"),
    (lambda om: pk.gaussian_sketch_batch([(6,)], 1, 1.0, [om]), TypeError, "problems"),
])
def test_sketch_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.randn(5, 3))


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import pgap_kernels as pk
    from pgap_kernels.memory import peak_added_bytes
    torch.set_num_threads(2)
    m = n = 4096
    seeds, coeffs = list(range(10)), [0.1] * 10
    omega, omega_t = torch.randn(n, 20), torch.randn(m, 20)
    g = pk.GaussianSum(m, n, seeds, coeffs, key=3)
    pk.gaussian_sketch(64, n, seeds, coeffs, omega)           # load kernels, warm up
    cpu = torch.device("cpu")
    if sys.argv[1] == "sketch":
        added = max(peak_added_bytes(lambda: g @ omega, cpu), peak_added_bytes(lambda: g.T @ omega_t, cpu))
    else:
        added = peak_added_bytes(lambda: g.materialize() @ omega, cpu)
    print(json.dumps({"added": added}))
""")


def peak_rss_added(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, mode], capture_output=True,
                            text=True, timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["added"]


def test_sketch_of_4096_square_sum_adds_far_less_than_64_mb():
    """Peak RSS added by one call (VmHWM reset before it), in a fresh process: the implicit
    sketch stays far below the 64 MiB a materialized 4096 x 4096 float32 matrix needs;
    materializing (the control, which shows the measurement sees such a matrix) does not."""
    matrix_bytes = 4096 * 4096 * 4
    sketch = peak_rss_added("sketch")
    print(f"peak RSS added: implicit sketch {sketch / 2**20:.2f} MiB")
    assert sketch < matrix_bytes / 16, f"implicit sketch added {sketch / 2**20:.1f} MiB"
    dense = peak_rss_added("dense")
    assert dense >= 0.95 * matrix_bytes, f"control: materializing added only {dense / 2**20:.1f} MiB"
