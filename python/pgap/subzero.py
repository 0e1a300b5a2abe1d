"""SubZero (Yu et al., 2024), P-GAP's control: random low-rank perturbations, no probes, no
alignment. The smallest :class:`WindowedLowRankZO`: it only says how a window's bases are set."""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

from ._checks import check_choice, check_int, check_real
from .base import Closure
from .distributed import ProcessGroup
from .params import MODE_CHOICES, DecayFilter
from .probe_bases import set_random_bases
from .seeds import BASIS_STREAM, derive_seed
from .windowed import WindowedLowRankZO

# The P-GAP options SubZero stands for (PGAP(subspace="random", align=False) gives the same
# trajectory): saved with its hyperparameters, so its checkpoints read as they always did.
PGAP_OPTIONS: Dict[str, Any] = {"probes": 10, "probe_eps": None, "delta": [2.0, 0.0],
                                "total_steps": None, "xi": "per_matrix", "subspace": "random",
                                "align": False, "svd_oversample": 10, "svd_iters": 1}


class SubZero(WindowedLowRankZO):
    """SubZero: each matrix gets P = (sqrt(m·n)/r)·U·Z·V^T with U, V the Q factors of stream
    Gaussians, refreshed every ``window`` steps, Z an r×r stream Gaussian; every other parameter
    a plain stream Gaussian in the same two-point step. 2 forwards per step, MeZO's lr.

    Options (beyond :class:`pgap.MeZO`'s) are :class:`pgap.PGAP`'s that apply: ``rank``,
    ``window``, ``scale`` ("auto" = "subzero"; "none" gives the unscaled U·Z·V^T), ``mode``,
    ``vector_lr_scale``, ``rounding``.
    """

    def __init__(self, model: nn.Module, *, lr: float, eps: float = 1e-3, rank: int = 8,
                 window: int = 100, scale: str = "auto", mode: str = "auto",
                 weight_decay: float = 0.0, seed: int = 0, vector_lr_scale: float = 1.0,
                 eval_mode: bool = True, backend: Optional[str] = None,
                 decay_filter: Optional[DecayFilter] = None,
                 process_group: Optional[ProcessGroup] = None, rounding: str = "stochastic") -> None:
        rank = check_int(rank, "rank", low=1)
        window = check_int(window, "window", low=1)
        scale = check_choice(scale, "scale", ("auto", "none", "subzero"))
        check_choice(mode, "mode", MODE_CHOICES)
        vector_lr_scale = check_real(vector_lr_scale, "vector_lr_scale", low=0.0)
        super().__init__(model, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed,
                         eval_mode=eval_mode, backend=backend, decay_filter=decay_filter,
                         process_group=process_group, rounding=rounding, mode=mode,
                         vector_lr_scale=vector_lr_scale, rank=rank, window=window,
                         scale="subzero" if scale == "auto" else scale)

    def hyperparameters(self) -> Dict[str, Any]:
        return dict(super().hyperparameters(), rank=self.rank, window=self.window, scale=self.scale,
                    mode=self.mode, vector_lr_scale=self.vector_lr_scale, **PGAP_OPTIONS)

    def _step(self, closure: Closure) -> float:
        """At a window's start: merge (functional) and draw new random bases. Then Z, the
        two-point pair along P and the update."""
        if self.steps_done % self.window == 0:
            self.merge()
            if self.matrices:
                set_random_bases(self.matrices, derive_seed(self.seed, self.steps_done, BASIS_STREAM))
                self._window_started(self.steps_done)
        seed = self.step_seed()
        self._directions(seed)
        return self._pair_and_update(closure, seed, delta=PGAP_OPTIONS["delta"][0])
