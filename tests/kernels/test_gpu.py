"""GPU-only checks beyond the shared parity suite (marked gpu; skipped without a CUDA device)."""
import pytest
import torch

import pgap_kernels as pk

from conftest import GPU_REASON, HAS_CUDA, require

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=GPU_REASON)]


def test_cuda_matches_native_bit_for_bit():
    """cuda and native evaluate the same header math without FMA contraction: equal bits."""
    require("cuda", "cuda")
    require("cpu", "native")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        with pk.use_backend("cuda"):
            gpu = pk.gaussian(1 << 20, 31, key=7, offset=(1 << 32) * 4 - 100, device="cuda", dtype=dtype)
        with pk.use_backend("native"):
            cpu = pk.gaussian(1 << 20, 31, key=7, offset=(1 << 32) * 4 - 100, dtype=dtype)
        assert torch.equal(gpu.cpu(), cpu), dtype


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_runs_on_a_side_stream(backend):
    require("cuda", backend)
    t = torch.zeros(1 << 16, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s), pk.use_backend(backend):
        pk.perturb_([t], 4, 1.0)
    s.synchronize()
    with pk.use_backend("reference"):
        ref = pk.gaussian(1 << 16, 4, device="cuda")
    torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_large_tensor_and_many_small(backend, distribution):
    """A tensor of 3*2^26 + 5 elements and 299 small ones in one call. The Rademacher stream's
    exact terms must give reference's bits."""
    require("cuda", backend)
    big = torch.zeros(3 * (1 << 26) + 5, device="cuda", dtype=torch.bfloat16)
    small = [torch.zeros(n, device="cuda") for n in range(1, 300)]
    with pk.use_backend(backend):
        pk.perturb_([big] + small, [1, 2], [1.0, 1.0], offsets=[7] + [0] * len(small),
                    distribution=distribution)
    with pk.use_backend("reference"):
        tail = big[-4099:].clone().zero_()
        pk.perturb_([tail], [1, 2], [1.0, 1.0], keys=[0], offsets=[7 + big.numel() - 4099],
                    distribution=distribution)
        ref_small = [torch.zeros_like(t) for t in small]
        pk.perturb_(ref_small, [1, 2], [1.0, 1.0], keys=list(range(1, 300)),
                    distribution=distribution)
    exact = distribution == "rademacher"
    torch.testing.assert_close(big[-4099:].float(), tail.float(), rtol=0 if exact else 2 ** -7,
                               atol=0 if exact else 1e-4)
    for a, b in zip(small, ref_small):
        torch.testing.assert_close(a, b, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-4)


def test_rademacher_cuda_matches_native_bit_for_bit():
    """The Rademacher stream on cuda (warp-shuffled Philox words) and native: equal bits, over
    sizes that leave partial warps, chunks and blocks, in every dtype and rounding."""
    require("cuda", "cuda")
    require("cpu", "native")
    g = torch.Generator().manual_seed(0)
    sizes, offsets = [1, 127, 129, 8191, 8193, (1 << 20) + 3], [0, 5, 128, 8, (1 << 39) - 4000, 100]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for rounding in ("nearest", "stochastic"):
            cpu = [torch.randn(n, generator=g).to(dtype) for n in sizes]
            gpu = [t.cuda() for t in cpu]
            kwargs = dict(keys=list(range(3, 3 + len(sizes))), offsets=offsets, decay=0.99,
                          mean=[t.flip(0) for t in cpu], mean_coeff=0.5, rounding=rounding,
                          rounding_seed=9, distribution="rademacher")
            with pk.use_backend("native"):
                pk.perturb_(cpu, [1, 2, 3], [1e-2, -3e-3, 0.0], **kwargs)
            kwargs["mean"] = [m.cuda() for m in kwargs["mean"]]
            with pk.use_backend("cuda"):
                pk.perturb_(gpu, [1, 2, 3], [1e-2, -3e-3, 0.0], **kwargs)
            for a, b in zip(gpu, cpu):
                assert torch.equal(a.cpu(), b), (dtype, rounding)

