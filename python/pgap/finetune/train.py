"""pgap-finetune's training loop (:func:`training_steps`) and its pieces: which examples a step
trains on (:func:`batch_indices`), the ranks under torchrun (:class:`Ranks`), one training step
(:func:`train_step`) and evaluation (:func:`evaluate`). bench/ experiments (compare's
protocol v2, pgap_scale) train with these same functions."""
from __future__ import annotations

import datetime
import itertools
import os
import random
import time
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .. import NonFiniteLossError
from ..distributed import exit_ranks
from .memory import PeakMemory
from .prompts import PromptClassifier


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> List[int]:
    """Example indices of ``step``: consecutive slices of one seeded permutation per epoch, so any
    step's batch is known without replaying the run (exact resume)."""
    out, orders = [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        if epoch not in orders:  # one shuffle per epoch the batch touches
            orders[epoch] = list(range(n))
            random.Random(seed * 1_000_003 + epoch).shuffle(orders[epoch])
        out.append(orders[epoch][i])
    return out


class Ranks:
    """This process's place under ``torchrun`` (rank 0 of 1 without it); joins the gloo group
    (timeout ``PGAP_DIST_TIMEOUT`` seconds, default 600) when WORLD_SIZE > 1."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            timeout = datetime.timedelta(seconds=float(os.environ.get("PGAP_DIST_TIMEOUT", "600")))
            dist.init_process_group("gloo", timeout=timeout)
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[Any]) -> List[Any]:
        """This rank's items (every world-th, starting at its rank)."""
        return list(items[self.rank::self.world])

    def total(self, *values: float) -> List[float]:
        """Each value summed over ranks."""
        if self.world == 1:
            return list(values)
        buf = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(buf)
        return buf.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def finish(self, code: int) -> int:
        """``code``; a process that joined the group itself ends here (:func:`exit_ranks`)."""
        if self.owns_group:
            exit_ranks(code)
        return code


def evaluate(clf: PromptClassifier, model, examples: Sequence[Any], ranks: Ranks) -> Tuple[float, float]:
    """(accuracy, mean cross-entropy) on ``examples``, each rank scoring its share (padded so
    that every rank runs the same forwards, which FSDP's collectives need; the padding is not
    counted)."""
    if not examples:
        return float("nan"), float("nan")
    mine = ranks.share(examples)
    width = -(-len(examples) // ranks.world)
    padded = mine + [examples[0]] * (width - len(mine))
    correct, loss, total = ranks.total(*clf.evaluate(model, padded, count=len(mine)), len(mine))
    return correct / total, loss / total


def train_step(opt, model, clf: PromptClassifier, train: Sequence[Any], step: int, batch_size: int,
               seed: int, ranks: Ranks, paired: bool = False) -> float:
    """Step ``step`` (0-based) of ``opt`` on its batch of ``train`` (:func:`batch_indices`; each
    rank takes its share): the one training step of pgap-finetune and
    bench/experiments/compare.py. ``paired``: both points in one forward over the batch stacked
    twice (``opt.step``'s ``pair_closure``; :mod:`pgap.paired`)."""
    mine = ranks.share(batch_indices(step, batch_size, len(train), seed))
    batch = clf.encode([train[i] for i in mine])
    opt.set_token_mask(batch["attention_mask"])
    closure = lambda: (clf.loss(model, batch), len(mine))  # noqa: E731
    if paired:
        return opt.step(closure, pair_closure=lambda: (clf.pair_loss(model, batch), len(mine)))
    return opt.step(closure)


class Step(NamedTuple):
    """One step of :func:`training_steps`: the steps done after it (1-based), its loss (nan when
    it was not finite) and its seconds."""

    step: int
    loss: float
    seconds: float


def training_steps(opt, model, clf: PromptClassifier, train: Sequence[Any], batch_size: int, seed: int,
                   ranks: Ranks, peak: PeakMemory, start: int = 0, stop: Optional[int] = None,
                   catch_nonfinite: bool = False, paired: bool = False) -> Iterator[Step]:
    """The training loop of pgap-finetune and bench/experiments/compare.py: steps ``start``,
    ``start + 1``, ... (up to ``stop``, else until the caller stops asking) of :func:`train_step`,
    each timed and its memory tracked by ``peak``; the caller evaluates and saves between steps,
    and stops after a loss that is not finite (the weights stay at the last finite step's): a
    first-order baseline's nan, or a ZO optimizer's :class:`NonFiniteLossError`, raised unless
    ``catch_nonfinite`` (then yielded as a nan loss). ``paired``: :func:`train_step`'s."""
    for step in itertools.count(start) if stop is None else range(start, stop):
        t = time.perf_counter()
        try:
            with peak.track():
                loss = train_step(opt, model, clf, train, step, batch_size, seed, ranks, paired)
        except NonFiniteLossError:
            if not catch_nonfinite:
                raise
            loss = float("nan")
        yield Step(step + 1, loss, time.perf_counter() - t)
