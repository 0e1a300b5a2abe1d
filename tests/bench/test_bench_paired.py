"""bench/experiments/bf16_direction.py and paired_agreement.py: their measurements on a tiny model."""
import math

import pytest
import torch

from bench.experiments import bf16_direction as bd
from bench.experiments import paired_agreement as pa
from zo_problems import tiny_llama


@pytest.mark.parametrize("eps, unperturbed", [(1e-7, 1.0), (1.0, 0.0)])
def test_bf16_direction_counts_unperturbed_elements(eps, unperturbed):
    """A perturbation far below an ulp leaves every bf16 weight as it was (z_eff = 0, error 1);
    one far above it moves every weight and z_eff is z to bf16 precision."""
    model, _ = tiny_llama(0)
    model.to(torch.bfloat16)
    stats = bd.measure(model, eps, seed=3)
    assert set(stats) == {"embedding", "matrices", "norm"}
    for n, same, diff, norm in stats.values():
        assert same / n == pytest.approx(unperturbed, abs=0.02)
        assert math.sqrt(diff / norm) == pytest.approx(1.0 if unperturbed else 0.0, abs=0.05)


def test_agreement_of_two_gradient_series():
    ref = [1.0, -2.0, 3.0, 0.5]
    assert pa.agreement(ref, ref) == {"correlation": pytest.approx(1.0), "relative_rms_difference": 0.0}
    noisy = [g + d for g, d in zip(ref, [0.1, -0.1, 0.1, -0.1])]
    a = pa.agreement(ref, noisy)
    assert a["correlation"] < 1.0
    assert a["relative_rms_difference"] == pytest.approx(0.1 / math.sqrt((1 + 4 + 9 + 0.25) / 4))
