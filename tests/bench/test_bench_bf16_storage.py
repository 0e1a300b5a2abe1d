"""bench/experiments/bf16_storage.py: its rounding to the bf16 grid is bf16 stochastic rounding."""
import torch

from bench.experiments.bf16_storage import round_to_bf16_grid_


def test_lands_on_the_bf16_grid_unbiased_for_both_signs():
    n = 200_000
    x = torch.cat([torch.full((n,), 1.0 + 2.0 ** -9), torch.full((n,), -0.37)])  # both between two bf16
    y = x.clone()
    round_to_bf16_grid_(y, torch.Generator().manual_seed(0))
    assert torch.equal(y, y.bfloat16().float())  # every value is a bf16 value
    for half in (slice(0, n), slice(n, 2 * n)):
        lo_hi = torch.unique(y[half])
        assert len(lo_hi) == 2  # only the two neighbours
        ulp = (lo_hi[1] - lo_hi[0]).item()
        # the mean of n Bernoulli roundings is within 5 standard errors (ulp / (2 sqrt(n)) at most)
        assert abs(y[half].mean().item() - x[half][0].item()) < 5 * ulp / (2 * n ** 0.5)


def test_values_on_the_grid_stay():
    x = torch.randn(4097).bfloat16().float()
    y = x.clone()
    round_to_bf16_grid_(y, torch.Generator().manual_seed(1))
    assert torch.equal(x, y)
