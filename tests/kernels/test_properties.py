"""Property-based parity of the native backend with reference over random layouts."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgap_kernels as pk
from pgap_kernels.testing import assert_perturb_close

from conftest import require

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

layouts = st.lists(
    st.tuples(st.integers(0, 9000),                       # numel: spans several 4096-element chunks
              st.integers(0, (1 << 35)),                  # offset: across the 2^32-block carry
              st.integers(0, (1 << 32) - 1),              # key
              st.sampled_from(DTYPES)),
    min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts=layouts,
       seeds=st.lists(st.integers(0, (1 << 64) - 1), min_size=0, max_size=3),
       decay=st.sampled_from([1.0, 0.0, 0.5]),
       with_mean=st.booleans())
def test_native_matches_reference(layouts, seeds, decay, with_mean):
    require("cpu", "native")
    g = torch.Generator().manual_seed(len(layouts))
    tensors = [torch.randn(n, generator=g).to(dt) for n, _, _, dt in layouts]
    means = [torch.randn(n, generator=g).to(dt) for n, _, _, dt in layouts] if with_mean else None
    coeffs = [0.5 - 0.25 * j for j in range(len(seeds))]
    kwargs = dict(keys=[k for _, _, k, _ in layouts], offsets=[o for _, o, _, _ in layouts],
                  decay=decay, mean=means, mean_coeff=0.75 if with_mean else 0.0)
    out = {}
    for backend in ("reference", "native"):
        out[backend] = [t.clone() for t in tensors]
        with pk.use_backend(backend):
            pk.perturb_(out[backend], seeds, coeffs, **kwargs)
    for a, e in zip(out["native"], out["reference"]):
        assert_perturb_close(a, e, coeffs + [0.75])


@pytest.mark.parametrize("n", [4096 * 3 + 1])
def test_shards_at_every_cut(n):
    """Every cut point of a tensor (offsets of all residues mod 4) gives the whole's numbers."""
    whole = pk.gaussian(n, 3, key=2)
    for cut in (1, 2, 3, 4, 4095, 4096, 4097, 8190, n - 1):
        head = pk.gaussian(cut, 3, key=2)
        tail = pk.gaussian(n - cut, 3, key=2, offset=cut)
        assert torch.equal(torch.cat([head, tail]), whole), cut
