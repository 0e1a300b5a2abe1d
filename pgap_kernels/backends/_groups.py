"""Split validated arguments into (dtype codes, sub-arguments) groups, dropping empty tensors."""
from __future__ import annotations

import functools
from typing import Callable, Dict, Iterator, List, Tuple

import torch

from ..args import PerturbArgs

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # csrc DType


def split_by_dtype(args: PerturbArgs) -> Iterator[Tuple[int, int, PerturbArgs]]:
    """One sub-argument set per (written dtype, source dtype) pair, in first-seen order, without
    zero-size tensors: (the written tensors' dtype code, their sources' and means' dtype code,
    the sub-arguments). The two codes differ only for out-of-place copies into another dtype."""
    index: Dict[Tuple[torch.dtype, torch.dtype], List[int]] = {}
    for p, t in enumerate(args.tensors):
        if t.numel() > 0:
            index.setdefault((t.dtype, args.source(p).dtype), []).append(p)
    for (dtype, src_dtype), ps in index.items():
        yield DTYPE_CODES[dtype], DTYPE_CODES[src_dtype], PerturbArgs(
            tensors=[args.tensors[p] for p in ps],
            means=[args.means[p] for p in ps] if args.means is not None else None,
            sources=[args.sources[p] for p in ps] if args.sources is not None else None,
            seeds=args.seeds, coeffs=args.coeffs,
            keys=[args.keys[p] for p in ps], offsets=[args.offsets[p] for p in ps],
            decay=args.decay, mean_coeff=args.mean_coeff, rounding_seed=args.rounding_seed,
            distribution=args.distribution,
            minus=[args.minus[p] for p in ps] if args.minus is not None else None)


def minus_in_two_passes(perturb_group: Callable[[PerturbArgs], None]) -> Callable[[PerturbArgs], None]:
    """``perturb_group`` for a backend without a fused minus output: the pass, then the minus
    pass (:meth:`PerturbArgs.split_minus`), bit for bit what a fused one writes."""
    @functools.wraps(perturb_group)
    def run(args: PerturbArgs) -> None:
        plus, minus = args.split_minus()
        perturb_group(plus)
        if minus is not None:
            perturb_group(minus)
    return run
