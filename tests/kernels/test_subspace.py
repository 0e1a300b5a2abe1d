"""subspace_perturb_: the definition (dense Xi from pk.gaussian), parity of every backend with
reference, row shards, lists, edge cases, memory. Bad arguments: tests/kernels/test_subspace_validation.py;
torch.library: tests/kernels/test_library_ops.py."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pgap_kernels as pk
from pgap_kernels.testing import ULP, assert_lowrank_close

from conftest import GPU_REASON, HAS_CUDA, is_triton_interpreter, require

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SEEDS, COEFFS = [3, (1 << 64) - 1, 1 << 40], [0.5, -1.0, 0.25]
NEAR_2_34 = (1 << 32) * 4 - 6  # the Philox block counter carries into its high word inside Xi


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def weights(m, n, dtype, device, seed=0, decay=1.0):
    if decay == 0.0:  # must not be read
        return torch.full((m, n), float("nan"), dtype=dtype, device=device)
    return torch.randn(m, n, generator=_gen(seed)).to(dtype).to(device)


def basis(n, r, device, seed=1):
    return (torch.randn(n, r, generator=_gen(seed)) / r ** 0.5).to(device)


def run(backend, tensors, bases, seeds=SEEDS, coeffs=COEFFS, **kwargs):
    out = [t.clone() for t in tensors]
    with pk.use_backend(backend):
        pk.subspace_perturb_(out, bases, seeds, coeffs, **kwargs)
    return out


def xi_sum(m, r, seeds, coeffs, key, offset):
    """sum_j c_j Xi_j (m x r, float64 on the CPU) from pk.gaussian: the definition."""
    total = torch.zeros(m, r, dtype=torch.float64)
    for s, c in zip(seeds, coeffs):
        total += c * pk.gaussian((m, r), s, key=key, offset=offset).double()
    return total


def magnitude(w, v, coeffs, decay):
    """Scale of the rounding errors of one output: |xi| < 7, so sum_j |c_j| * 7 * sum_k |V[j, k]|
    bounds |Xi @ V.T|; plus |decay * W|."""
    mag = 7.0 * sum(abs(c) for c in coeffs) * float(v.double().abs().sum(1).max()) if v.numel() else 0.0
    if decay != 0.0 and w.numel():
        mag += abs(decay) * float(w.double().abs().max())
    return mag


def small(device, backend):
    return is_triton_interpreter(device, backend)


# ----------------------------------------------------------------------------------------------
# reference = the definition
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("decay", [1.0, 0.9, 0.0])
def test_reference_equals_dense_gaussian_product(dtype, decay):
    """W <- decay*W + sum_j c_j gaussian((m, r), s_j, key, offset) @ V.T, computed densely."""
    m, n, r, key, offset = 67, 45, 6, 11, NEAR_2_34
    w, v = weights(m, n, dtype, "cpu", decay=decay), basis(n, r, "cpu")
    got = run("reference", [w], [v], keys=[key], offsets=[offset], decay=decay)[0]
    exact = xi_sum(m, r, SEEDS, COEFFS, key, offset) @ v.double().T
    if decay != 0.0:
        exact += decay * w.double()
    atol = 1e-5 * (1 + magnitude(w, v, COEFFS, decay))
    torch.testing.assert_close(got.double(), exact.to(dtype).double(), rtol=ULP[dtype], atol=atol)


def test_reference_never_holds_m_by_n():
    """Xi is m x r; the product is applied by the reference low-rank update in ~1 MiB row tiles."""
    from pgap_kernels.backends.reference.lowrank import TILE_ELEMENTS, rows_per_tile
    assert rows_per_tile(49152) * 49152 <= max(TILE_ELEMENTS, 49152)


# ----------------------------------------------------------------------------------------------
# parity of every backend with reference
# ----------------------------------------------------------------------------------------------
SHAPES = [(1, 1, 1), (3, 5, 2), (4097, 3, 4), (3, 4097, 8), (257, 129, 32), (100, 300, 33),
          (70, 64, 64), (130, 200, 1)]
TINY_SHAPES = [(1, 1, 1), (3, 5, 2), (17, 33, 8), (20, 9, 17), (5, 40, 4)]
OFFSETS = [0, 5, NEAR_2_34, 8]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("decay", [1.0, 0.9, 0.0])
def test_parity_shapes(device_backend, dtype, decay):
    device, backend = device_backend
    shapes = TINY_SHAPES if small(device, backend) else SHAPES
    for i, (m, n, r) in enumerate(shapes):
        w, v = weights(m, n, dtype, device, seed=i, decay=decay), basis(n, r, device, seed=100 + i)
        kwargs = dict(keys=[7 + i], offsets=[OFFSETS[i % len(OFFSETS)]], decay=decay)
        exp = run("reference", [w], [v], **kwargs)[0]
        got = run(backend, [w], [v], **kwargs)[0]
        assert got.device.type == device and got.dtype == dtype
        assert not got.isnan().any()
        assert_lowrank_close(got, exp, magnitude(w, v, COEFFS, decay))


@pytest.mark.parametrize("rank", [1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 64, 65, 100])
def test_parity_ranks(device_backend, rank):
    device, backend = device_backend
    if small(device, backend) and rank > 33:
        pytest.skip("large ranks are slow under the Triton interpreter")
    m, n = (9, 19) if small(device, backend) else (150, 257)
    w, v = weights(m, n, torch.float32, device, seed=rank), basis(n, rank, device, seed=rank)
    exp = run("reference", [w], [v], seeds=[rank], coeffs=[-1.5], offsets=[3])[0]
    got = run(backend, [w], [v], seeds=[rank], coeffs=[-1.5], offsets=[3])[0]
    assert_lowrank_close(got, exp, magnitude(w, v, [1.5], 1.0))


def test_many_matrices_mixed_sizes_dtypes_and_ranks(device_backend):
    """One call for all matrices; default keys are the list positions, default offsets 0."""
    device, backend = device_backend
    specs = [(7, 5, 3), (16, 16, 4), (1, 9, 2), (7, 5, 3), (0, 4, 2), (33, 1, 8), (4, 0, 3)]
    if not small(device, backend):
        specs += [(200, 64, 8), (64, 200, 32), (300, 129, 5), (1, 4097, 4)]
    ws = [weights(m, n, DTYPES[i % 3], device, seed=i) for i, (m, n, _) in enumerate(specs)]
    vs = [basis(n, r, device, seed=50 + i) for i, (_, n, r) in enumerate(specs)]
    exp = run("reference", ws, vs, decay=0.95)
    got = run(backend, ws, vs, decay=0.95)
    for i, (g, e, w, v) in enumerate(zip(got, exp, ws, vs)):
        assert g.shape == specs[i][:2]
        assert_lowrank_close(g, e, magnitude(w, v, COEFFS, 0.95))
    # the same as one call per matrix with key = its position
    for p, (w, v) in enumerate(zip(ws, vs)):
        single = run(backend, [w], [v], keys=[p], decay=0.95)[0]
        if backend in ("native", "cuda"):
            assert torch.equal(single, got[p])
        else:
            assert_lowrank_close(single, got[p], magnitude(w, v, COEFFS, 0.95))


@pytest.mark.parametrize("backend", ["reference", "native", "triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_shard_equals_rows_of_unsharded(backend, dtype):
    """A shard starting at row i0 passes offset + i0*r and gets its rows of the whole result,
    bit for bit in the compiled kernels (every element is the same float32 chain in any tiling).
    Not under the Triton interpreter: its tl.dot is NumPy's matmul, whose order of summation
    depends on the operand shapes, an element's place in the tile and the BLAS kernel chosen
    (OPENBLAS_CORETYPE=Haswell gives other bits); nor in reference (torch.mm)."""
    device = "cuda" if backend == "cuda" or (backend == "triton" and HAS_CUDA) else "cpu"
    if backend == "cuda" and not HAS_CUDA:
        pytest.skip(GPU_REASON)
    require(device, backend)
    tiny = small(device, backend)
    m, n, r = (21, 18, 5) if tiny else (301, 150, 12)
    cuts = [0, 7, 16, m] if tiny else [0, 1, 97, 200, m]
    base = 9
    w, v = weights(m, n, dtype, device), basis(n, r, device)
    whole = run(backend, [w], [v], keys=[4], offsets=[base], decay=0.9)[0]
    shards = [w[a:b].clone() for a, b in zip(cuts, cuts[1:])]
    with pk.use_backend(backend):
        pk.subspace_perturb_(shards, [v] * len(shards), SEEDS, COEFFS, keys=[4] * len(shards),
                             offsets=[base + a * r for a in cuts[:-1]], decay=0.9)
    if backend == "reference" or is_triton_interpreter(device, backend):
        assert_lowrank_close(torch.cat(shards), whole, magnitude(w, v, COEFFS, 0.9))
    else:
        assert torch.equal(torch.cat(shards), whole)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_overwrite_ignores_nan(device_backend, dtype):
    """decay == 0 writes Xi @ V.T without reading W (NaN and inf are not propagated)."""
    device, backend = device_backend
    w = torch.full((13, 11), float("nan"), dtype=dtype, device=device)
    w[::2] = float("inf")
    v = basis(11, 4, device)
    got = run(backend, [w], [v], decay=0.0)[0]
    exp = run("reference", [torch.zeros_like(w)], [v], decay=0.0)[0]
    assert torch.isfinite(got).all()
    assert_lowrank_close(got, exp, magnitude(w, v, COEFFS, 0.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nearest_with_offsets_near_the_index_limit(device_backend, dtype):
    """Round to nearest draws no rounding word, so offsets[p] / r * n (the stochastic-rounding
    index, > 2**64 here) must not reach the kernels' int64/uint64 tables: any valid stream offset
    works, as on reference."""
    device, backend = device_backend
    m, n, r = 6, 64, 4
    w, v = weights(m, n, dtype, device), basis(n, r, device)
    for offset in (1 << 62, (1 << 63) - m * r - 1):  # the largest valid offset
        kwargs = dict(keys=[3], offsets=[offset], decay=0.9, rounding="nearest")
        exp = run("reference", [w], [v], **kwargs)[0]
        got = run(backend, [w], [v], **kwargs)[0]
        assert_lowrank_close(got, exp, magnitude(w, v, COEFFS, 0.9))


def test_no_seeds_only_decays(device_backend):
    device, backend = device_backend
    w, v = weights(9, 10, torch.float32, device), basis(10, 3, device)
    assert torch.equal(run(backend, [w], [v], seeds=[], coeffs=[])[0], w)
    torch.testing.assert_close(run(backend, [w], [v], seeds=[], coeffs=[], decay=0.5)[0], 0.5 * w,
                               rtol=0, atol=0)


def test_single_tensor_api_and_defaults():
    w, v = weights(12, 8, torch.float32, "cpu"), basis(8, 3, "cpu")
    single = w.clone()
    pk.subspace_perturb_(single, v, 5, 0.5)
    listed = run("native", [w], [v], seeds=[5], coeffs=[0.5], keys=[0], offsets=[0])[0]
    assert torch.equal(single, listed)


def test_strided_bases_are_read_as_their_values():
    w = weights(40, 30, torch.float32, "cpu")
    v = basis(30, 6, "cpu")
    v_t = v.T.contiguous().T  # column-major view
    wide = torch.randn(30, 12)[:, ::2]  # every other column
    assert not v_t.is_contiguous() and not wide.is_contiguous()
    for b in (v_t, wide):
        assert torch.equal(run("native", [w], [b])[0], run("native", [w], [b.contiguous()])[0])


def test_shared_basis_and_empty_matrices():
    """Two matrices may share one basis (it is only read); empty matrices are left alone."""
    v = basis(6, 2, "cpu")
    a, b = weights(4, 6, torch.float32, "cpu", seed=1), weights(5, 6, torch.float32, "cpu", seed=2)
    empty_m, empty_n = torch.zeros(0, 6), torch.zeros(3, 0)
    got = run("native", [a, empty_m, b, empty_n], [v, v, v, torch.zeros(0, 4)])
    assert got[1].shape == (0, 6) and got[3].shape == (3, 0)
    assert torch.equal(got[0], run("native", [a], [v], keys=[0])[0])
    assert torch.equal(got[2], run("native", [b], [v], keys=[2])[0])
    pk.subspace_perturb_([empty_m], [v], 1, 1.0)  # nothing to do


def test_version_counter_is_bumped():
    w = torch.zeros(4, 4)
    before = w._version
    pk.subspace_perturb_(w, basis(4, 2, "cpu"), 1, 1.0)
    assert w._version > before


def test_parameters_are_updated_in_place():
    lin = torch.nn.Linear(6, 5, bias=False)
    before = lin.weight.detach().clone()
    pk.subspace_perturb_([lin.weight], [basis(6, 2, "cpu")], 1, 1e-3)
    assert lin.weight.requires_grad and not torch.equal(lin.weight.detach(), before)


# ----------------------------------------------------------------------------------------------
# GPU only: cuda against native bit for bit, large shapes, alignment, streams
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason=GPU_REASON)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,r", [(1, 1, 1), (257, 129, 32), (1000, 3000, 8), (65, 4097, 33),
                                   (4097, 33, 4), (2048, 2304, 64)])
@pytest.mark.parametrize("decay", [1.0, 0.0])
def test_cuda_equals_native_bit_for_bit(dtype, m, n, r, decay):
    """Same header math for Xi, the same FMA chain over k and fmaf(decay, W, acc) as the
    AVX2/AVX-512 host kernels: the same bits (the generic host build does not fuse)."""
    require("cuda", "cuda")
    require("cpu", "native")
    if pk._native.build_info()["host_isa"] == "generic":
        pytest.skip("the generic host build does not fuse multiply-adds")
    w, v = weights(m, n, dtype, "cpu", seed=r, decay=decay), basis(n, r, "cpu", seed=r)
    kwargs = dict(keys=[5], offsets=[NEAR_2_34], decay=decay)
    cpu = run("native", [w], [v], **kwargs)[0]
    gpu_out = run("cuda", [w.cuda()], [v.cuda()], **kwargs)[0]
    assert torch.equal(gpu_out.cpu(), cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason=GPU_REASON)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_model_shapes_many_tiles(backend):
    """LLaMA-7B-like shapes: wide tiles (several column chunks per CTA), mixed dtypes in one call,
    a misaligned W (scalar epilogue) and r > 32 (Xi drawn per rank slice)."""
    require("cuda", backend)
    specs = [(4096, 11008, 32, torch.bfloat16), (2048, 2048, 8, torch.float32),
             (576, 1536, 4, torch.float16), (1023, 1029, 48, torch.float32)]
    ws = [weights(m, n, dt, "cuda", seed=i) for i, (m, n, _, dt) in enumerate(specs)]
    base = torch.randn(1000 * 1001 + 1, device="cuda")
    ws.append(base[1:].view(1000, 1001))  # data pointer not 16-byte aligned
    vs = [basis(n, r, "cuda", seed=i) for i, (_, n, r, _) in enumerate(specs)] + [basis(1001, 16, "cuda")]
    exp = run("reference", ws, vs, decay=0.9)
    got = run(backend, ws, vs, decay=0.9)
    for g, e, w, v in zip(got, exp, ws, vs):
        assert_lowrank_close(g, e, magnitude(w, v, COEFFS, 0.9))
    first = base[0].clone()
    with pk.use_backend(backend):
        pk.subspace_perturb_([ws[-1]], [vs[-1]], 1, 1.0)
    assert torch.equal(base[0], first)  # the element before the misaligned W is untouched


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason=GPU_REASON)
def test_cuda_on_a_side_stream_and_deterministic():
    require("cuda", "cuda")
    w, v = weights(1000, 3000, torch.float32, "cuda"), basis(3000, 32, "cuda")
    ref = run("cuda", [w], [v], decay=0.5)[0]
    out = w.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), pk.use_backend("cuda"):
        pk.subspace_perturb_([out], [v], SEEDS, COEFFS, decay=0.5)
    s.synchronize()
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------------------------
# memory: never an m x n temporary
# ----------------------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import pgap_kernels as pk
    from pgap_kernels.memory import peak_added_bytes
    torch.set_num_threads(2)
    backend = sys.argv[1]
    w, v = torch.randn(4096, 4096), torch.randn(4096, 8)
    with pk.use_backend(backend):
        pk.subspace_perturb_(w[:64].clone(), v, [1, 2], [0.1, 0.2])   # load kernels, warm up
        added = peak_added_bytes(lambda: pk.subspace_perturb_(w, v, [1, 2], [0.1, 0.2]),
                                 torch.device("cpu"))
    print(json.dumps({"added": added}))
""")


@pytest.mark.parametrize("backend,fraction", [("native", 1 / 16), ("reference", 1 / 8)])
def test_peak_memory_far_below_the_matrix(backend, fraction):
    """Peak RSS added by one call on a 4096 x 4096 float32 W (64 MiB), in a fresh process: native
    holds a few tiles per thread; reference holds Xi (m x r) and ~1 MiB product tiles plus the
    int64 temporaries of its stream."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, backend], capture_output=True,
                         text=True, timeout=600, check=True)
    added = json.loads(out.stdout.strip().splitlines()[-1])["added"]
    print(f"{backend}: peak RSS added {added / 2**20:.2f} MiB")
    assert added < fraction * 4096 * 4096 * 4


# ----------------------------------------------------------------------------------------------
# triton: the GPU kernel compiles for sm_80 and sm_90 without a GPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_subspace_kernel_compiles_for_nvidia():
    """Every specialization compiles (Triton ships ptxas); the float32 product uses FMA units (no
    TF32 mma), no atomics, and the aligned W path loads and stores 16 bytes at a time."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "compile_triton_subspace.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script), "80", "90"], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 * 3 * 2 * 2 * 2
    for r in rows:
        assert not r["mma"] and not r["atomics"], r
        if r["aligned"]:
            assert "st.global.v4.b32" in r["memory_ops"], r
            if not r["overwrite"]:
                assert "ld.global.v4.b32" in r["memory_ops"], r
