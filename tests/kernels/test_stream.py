"""The philox4x32-10/v1 contract: Random123 known answers and xi against a float64 oracle."""
import numpy as np
import pytest
import torch

import pgap_kernels as pk
from pgap_kernels import _native
from pgap_kernels.backends.reference.philox import philox4x32_10
from pgap_kernels.testing import assert_xi_close

from conftest import backend_cases, require
from oracle import philox as oracle_philox
from oracle import xi_exact

# Random123 known-answer vectors for philox4x32-10: (counter, key) -> output words.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers_reference(ctr, key, expected):
    words = philox4x32_10(*[torch.tensor([c], dtype=torch.int64) for c in ctr], *key)
    assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers_native(ctr, key, expected):
    lib, reason = _native.load()
    if lib is None:
        pytest.skip(reason)
    assert tuple(lib.philox4x32_10(*ctr, *key)) == expected


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers_oracle(ctr, key, expected):
    assert tuple(int(w[()]) for w in oracle_philox(*ctr, *key)) == expected


def test_triton_philox_matches_reference_words():
    """tl.philox with our counter layout gives the reference words (interpreter or GPU)."""
    require("cuda" if torch.cuda.is_available() else "cpu", "triton")
    import triton
    import triton.language as tl

    @triton.jit
    def words(out, seed, key, n, BLOCK: tl.constexpr):
        b = tl.arange(0, BLOCK).to(tl.int64) + (1 << 32) - 2  # crosses the c1 boundary
        c0 = (b & 0xFFFFFFFF).to(tl.uint32)
        c1 = (b >> 32).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, tl.zeros_like(c0) + key, tl.zeros_like(c0))
        i = tl.arange(0, BLOCK)
        tl.store(out + 4 * i, w0.to(tl.int64), mask=i < n)
        tl.store(out + 4 * i + 1, w1.to(tl.int64), mask=i < n)
        tl.store(out + 4 * i + 2, w2.to(tl.int64), mask=i < n)
        tl.store(out + 4 * i + 3, w3.to(tl.int64), mask=i < n)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    seed, key = 0xDEADBEEF12345678, 77
    out = torch.zeros(16, dtype=torch.int64, device=device)
    words[(1,)](out, seed, key, 4, BLOCK=4)
    blocks = np.arange(4, dtype=np.uint64) + np.uint64((1 << 32) - 2)
    w = oracle_philox(blocks & np.uint64(0xFFFFFFFF), blocks >> np.uint64(32),
                      np.full(4, key, np.uint64), np.zeros(4, np.uint64),
                      seed & 0xFFFFFFFF, seed >> 32)
    assert out.cpu().view(4, 4).tolist() == np.stack(w, axis=1).astype(np.int64).tolist()


SEEDS = [0, 1234, (1 << 32) + 5, (1 << 64) - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_gaussian_is_exact(seed):
    with pk.use_backend("reference"):
        z = pk.gaussian(4099, seed, key=3, offset=(1 << 32) * 4 - 9)
    idx = np.arange(4099, dtype=np.uint64) + np.uint64((1 << 32) * 4 - 9)
    assert_xi_close(z, torch.from_numpy(xi_exact(seed, 3, idx)))


@pytest.mark.parametrize("device_backend_case", backend_cases(), indirect=False)
@pytest.mark.parametrize("n", [1, 3, 4097])
@pytest.mark.parametrize("offset", [0, 5, (1 << 32) - 3, (1 << 34) - 2])
def test_gaussian_is_exact(device_backend_case, n, offset):
    """Each backend's float32 xi is within 1e-5*(1+|xi|) of the float64 oracle."""
    device, backend = device_backend_case
    require(device, backend)
    if backend == "triton" and device == "cpu" and n > 1024:
        n = 1031  # the interpreter is slow; still crosses several programs
    seed, key = 0x0123456789ABCDEF, 0xFFFFFFFF
    with pk.use_backend(backend):
        z = pk.gaussian((n,), seed, key=key, offset=offset, device=device)
    idx = np.arange(n, dtype=np.uint64) + np.uint64(offset)
    assert z.dtype == torch.float32 and z.shape == (n,)
    assert_xi_close(z, torch.from_numpy(xi_exact(seed, key, idx)))


def test_gaussian_shapes_and_dtypes():
    z = pk.gaussian((3, 5, 7), 9)
    assert z.shape == (3, 5, 7)
    flat = pk.gaussian(105, 9)
    assert torch.equal(z.reshape(-1), flat)
    for dtype in (torch.bfloat16, torch.float16):
        low = pk.gaussian((3, 5, 7), 9, dtype=dtype)
        assert low.dtype == dtype
        assert torch.equal(low, z.to(dtype))  # exactly one rounding from float32
    assert pk.gaussian((0, 4), 1).shape == (0, 4)
    assert pk.gaussian(7, 1, device=torch.device("cpu")).device.type == "cpu"
