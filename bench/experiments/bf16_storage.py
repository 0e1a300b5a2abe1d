"""Is bf16's accuracy loss the weights' storage? (issue 23 item 2's open question)

bf16-weight MeZO trails float32 by 2.5-3.3 points at 1,200 forwards on the real task, while
``bf16-mixed`` (float32 weights, bf16 autocast forwards) does not (docs/results.md, "bf16
against float32 on the real task"). bf16-mixed differs from bf16 weights in three ways: the
weights are not stored on the bf16 grid (no stochastic rounding of each update), the norm and
embedding weights are perturbed and read in float32, and the residual stream is float32. This
runs ``bench.experiments.compare`` with one more precision, ``bf16-grid``: bf16-mixed whose
float32 weights are put back on the bf16 grid after every step by unbiased stochastic rounding
(what bf16 storage does to an update; torch's generator, seeded per run, not the kernels'
rounding stream). Equal to bf16-mixed: the storage is not the cause; equal to bf16: it is.

Takes compare's arguments; ``--dtype`` is forced to ``bf16-grid``::

    python -m bench.experiments.bf16_storage --csv bench/results/compare_v2_grid.csv --threads 1 \\
        --phase final --checkpoints 600 1200 --seeds 0 1 --no-plot \\
        --grid "mezo:distribution=rademacher=3e-5"
    python -m bench.experiments.compare --report --csv bench/results/compare_v2.csv \\
        --also bench/results/compare_v2_grid.csv bench/results/compare_v2_mixed.csv --no-plot
"""
from __future__ import annotations

import sys

import torch

from bench.experiments import compare
from pgap import dtypes

NAME = "bf16-grid"
GRID_SEED = 0x5EED  # added to the run's seed: the rounding draws differ from every other stream


def round_to_bf16_grid_(t: torch.Tensor, generator: torch.Generator) -> None:
    """Round float32 ``t`` in place to a bf16 value, up (in magnitude) with probability equal to
    the dropped 16 bits' fraction: unbiased, as bf16 stochastic rounding. Finite values only."""
    bits = t.view(torch.int32)
    noise = torch.randint(0, 1 << 16, t.shape, generator=generator, dtype=torch.int32)
    bits.add_(noise).bitwise_and_(-(1 << 16))


def on_grid(build):
    """``build_optimizer`` that first rounds the model's float32 weights to the nearest bf16
    (the bf16 model's start: 79 % of the embedded SmolLM2's float32 weights are off the grid),
    and whose optimizers round every parameter to the bf16 grid after each step."""
    def build_on_grid(method, model, **kwargs):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.bfloat16())
        opt = build(method, model, **kwargs)
        generator = torch.Generator().manual_seed(int(kwargs["seed"]) + GRID_SEED)
        step = opt.step

        def step_on_grid(*args, **kw):
            loss = step(*args, **kw)
            with torch.no_grad():
                for p in model.parameters():
                    round_to_bf16_grid_(p, generator)
            return loss

        opt.step = step_on_grid
        return opt
    return build_on_grid


def main(argv=None) -> int:
    dtypes.DTYPES[NAME] = torch.float32
    dtypes.COMPUTE[NAME] = torch.bfloat16
    compare.build_optimizer = on_grid(compare.build_optimizer)
    argv = list(sys.argv[1:] if argv is None else argv)
    return compare.main(argv + ["--dtype", NAME])


if __name__ == "__main__":
    sys.exit(main())
