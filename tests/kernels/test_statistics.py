"""Statistical sanity of the streams, Gaussian and Rademacher (fixed seeds, so the outcome is
deterministic)."""
import numpy as np
import pytest
import torch
from scipy import stats

import pgap_kernels as pk

N = 1 << 20
SIGMA = 5.0  # bounds at five standard errors


def draw(seed, key=0, offset=0, n=N, stream=pk.gaussian):
    return stream(n, seed, key=key, offset=offset).double().numpy()


def corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("seed,offset", [(0, 0), (2024, 0), ((1 << 64) - 1, (1 << 34) - N // 2)])
def test_moments_and_ks(seed, offset):
    z = draw(seed, offset=offset)
    assert abs(z.mean()) < SIGMA / np.sqrt(N)
    assert abs(z.var() - 1.0) < SIGMA * np.sqrt(2.0 / N)
    assert abs(stats.skew(z)) < SIGMA * np.sqrt(6.0 / N)
    assert abs(stats.kurtosis(z)) < SIGMA * np.sqrt(24.0 / N)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert np.abs(z).max() < 6.5  # Box-Muller with u >= 2^-24 bounds |z| by sqrt(2*24*ln 2) ~ 5.77


def test_reference_moments_small():
    """The pure-PyTorch stream has the same distribution (smaller sample: it is slow)."""
    with pk.use_backend("reference"):
        z = pk.gaussian(1 << 16, 5).double().numpy()
    assert abs(z.mean()) < SIGMA / np.sqrt(z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-4


def test_no_correlation_across_keys_seeds_blocks():
    bound = SIGMA / np.sqrt(N)
    base = draw(7, key=0)
    assert abs(corr(base, draw(7, key=1))) < bound
    assert abs(corr(base, draw(8, key=0))) < bound
    assert abs(corr(base, draw(7 + (1 << 32), key=0))) < bound  # seeds differing in high word
    assert abs(corr(base, draw(7, offset=1 << 34))) < bound     # blocks differing in c1 only
    lanes = base.reshape(-1, 4)
    for a in range(4):
        for b in range(a + 1, 4):
            assert abs(corr(lanes[:, a], lanes[:, b])) < 2 * bound  # within a Philox block
        assert abs(corr(lanes[:-1, a], lanes[1:, a])) < 2 * bound  # adjacent blocks
    assert abs(corr(base[:-1], base[1:])) < bound  # adjacent elements


def test_squares_independent_across_lanes():
    """Box-Muller pairs share r: check the squares are uncorrelated too."""
    lanes = draw(11).reshape(-1, 4) ** 2
    bound = 2 * SIGMA / np.sqrt(lanes.shape[0])
    assert abs(corr(lanes[:, 0], lanes[:, 1])) < bound
    assert abs(corr(lanes[:, 0], lanes[:, 2])) < bound


def test_seed_changes_everything():
    a, b = pk.gaussian(4096, 1), pk.gaussian(4096, 2)
    assert not torch.isclose(a, b).any()


# -- the Rademacher stream ----------------------------------------------------------------------

CARRY = (1 << 39) - 200  # near block 2^32 of the Rademacher stream (the c0 -> c1 carry)


def signs(seed, key=0, offset=0, n=N):
    return draw(seed, key, offset, n, stream=pk.rademacher)


@pytest.mark.parametrize("seed,offset", [(0, 0), (2024, 0), ((1 << 64) - 1, CARRY - N // 2)])
def test_rademacher_values_mean_and_balance(seed, offset):
    r = signs(seed, offset=offset)
    assert set(np.unique(r).tolist()) == {-1.0, 1.0}
    assert abs(r.mean()) < SIGMA / np.sqrt(N)  # mean 0, variance 1
    assert abs((r > 0).mean() - 0.5) < SIGMA * 0.5 / np.sqrt(N)
    # every bit position of a block is balanced (N / 128 samples each)
    per_position = (r.reshape(-1, 128) > 0).mean(axis=0)
    assert np.abs(per_position - 0.5).max() < SIGMA * 0.5 / np.sqrt(N / 128)


def test_rademacher_no_correlation_across_keys_seeds_blocks_positions():
    bound = SIGMA / np.sqrt(N)
    base = signs(7)
    assert abs(corr(base, signs(7, key=1))) < bound
    assert abs(corr(base, signs(8))) < bound
    assert abs(corr(base, signs(7 + (1 << 32)))) < bound  # seeds differing in the high word
    assert abs(corr(base, signs(7, offset=1 << 39))) < bound  # blocks differing in c1 only
    assert abs(corr(base[:-1], base[1:])) < bound  # adjacent elements (bits of one word)
    assert abs(corr(base[:-32], base[32:])) < bound  # the same bit of adjacent words
    assert abs(corr(base[:-128], base[128:])) < bound  # the same position of adjacent blocks
    assert abs(np.mean(base[:-2] * base[1:-1] * base[2:])) < bound  # no third-order pattern


def test_rademacher_independent_of_the_gaussian_stream():
    """Same seed, key and indices: rho is uncorrelated with xi and with its sign (another
    counter domain: c3 = 2, not 0)."""
    bound = SIGMA / np.sqrt(N)
    for seed, key in ((7, 0), (1234, 3)):
        r, z = signs(seed, key=key), draw(seed, key=key)
        assert abs(corr(r, z)) < bound
        assert abs(np.mean(r * np.sign(z))) < bound
