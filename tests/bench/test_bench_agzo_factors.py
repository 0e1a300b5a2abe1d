"""bench/experiments/agzo_factors.py: its specs, what it counts as done, and the per-batch-basis
diagnostic optimizer."""
import pytest
import torch

from bench.experiments import agzo_factors as af
from zo_problems import mlp_problem


def test_specs_parse_and_bad_ones_are_refused():
    assert af.parse_spec("agzo:fixed@3e-4") == ("agzo", "fixed", 3e-4)
    assert af.parse_spec("mezo@1e-4") == ("mezo", "", 1e-4)
    for bad in ("sgd@1e-4", "agzo", "agzo:nope@1e-4", "mezo:perbatch@1e-4", "mezo:frozen@1e-4"):
        with pytest.raises(ValueError, match="spec"):
            af.parse_spec(bad)


def test_a_run_is_done_at_its_last_evaluation_or_its_divergence():
    def row(spec, step, status="ok", steps=100, seed=0):
        return dict(spec=spec, step=str(step), status=status, steps_total=str(steps), seed=str(seed))
    rows = [row("a@1", 50), row("b@1", 100), row("c@1", 25, "diverged"), row("d@1", 100, steps=50),
            row("e@1", 100, seed=1)]
    assert af.done_specs(rows, steps=100, seed=0) == {"b@1", "c@1"}


def test_per_batch_bases_cost_one_captured_forward_per_step_and_follow_the_batch():
    model, closure = mlp_problem(seed=0)
    opt = af.PerBatchBasisAGZO(model, lr=1e-3, eps=1e-3, rank=2, seed=0)
    for _ in range(3):
        opt.step(closure)
    assert opt.forwards == 9  # 1 captured + 2 perturbed forwards per step
    before = [b.V.clone() for b in opt.bases]
    opt.step(closure)  # same data: the warm-started iteration keeps (nearly) the same span
    for b, v in zip(opt.bases, before):
        overlap = torch.linalg.matrix_norm(v.T @ b.V) ** 2 / b.rank
        assert overlap > 0.9


def test_divergence_is_judged_on_the_batch_when_the_batch_is_fixed():
    assert af.diverged("", [1.0], [1.0], start_dev=0.8, dev_loss=1.7)
    assert not af.diverged("", [1.0], [5.0], start_dev=0.8, dev_loss=1.5)
    assert not af.diverged("fixed", [0.9, 0.7], [0.4], start_dev=0.8, dev_loss=1.9)  # overfitting
    assert af.diverged("fixed", [0.9, 0.7], [1.7, float("nan")], start_dev=0.8, dev_loss=0.9)
