"""torch.distributed on the CPU (gloo, 2 spawned processes with a 60 s timeout): data-parallel and
FSDP2-sharded ZO steps give the single-process trajectory."""
import multiprocessing as mp

import pytest
import torch
import torch.distributed as dist

import dist_cases

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

PGAP = {"rank": 2, "window": 2, "probes": 2, "delta": 1.0}
# fp32: the ranks' half-batch means are combined in another order than the full-batch mean; the
# ~1e-7 relative difference of a loss reaches g amplified by 1/(2ε) (ε = 1e-2 here)
TOL = dict(rtol=1e-4, atol=1e-5)


def run_ranks(tmp_path, case, world=2, timeout=150, **kwargs):
    """Run dist_cases.worker(case) on ``world`` spawned ranks; a rank that does not finish in
    ``timeout`` seconds fails the test (a hang)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=dist_cases.worker,
                         args=(r, world, str(tmp_path / "init"), case, str(tmp_path), kwargs))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} did not finish in {timeout} s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def reference(case="train", **kwargs):
    return dist_cases.CASES[case](0, 1, **kwargs)


def assert_same_run(results, ref, tol=TOL):
    for r, res in enumerate(results):
        assert "error" not in res, res.get("traceback")
        torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(ref["losses"]), **tol,
                                   msg=lambda m, r=r: f"rank {r} losses: {m}")
        for name, w in ref["weights"].items():
            torch.testing.assert_close(res["weights"][name], w, **tol, msg=lambda m, r=r, name=name: f"rank {r} {name}: {m}")
    for name in ref["weights"]:  # the ranks agree exactly with each other
        assert torch.equal(results[0]["weights"][name], results[1]["weights"][name]), name


@pytest.mark.parametrize("method, options", [("mezo", {}), ("pgap", PGAP),
                                             ("mezo-gv", {}), ("ldsd", {"lr_mu": 0.1})])
def test_data_parallel_matches_one_process(tmp_path, method, options):
    kw = dict(method=method, options=options, steps=4)
    results = run_ranks(tmp_path, "train", **kw)
    assert_same_run(results, reference(**kw))
    # only scalars crossed the network: (w·L, w) in float64 per forward
    assert results[0]["bytes"] == 16 * results[0]["forwards"]


AGZO = {"rank": 2, "refresh": 2, "first_iters": 1}


@pytest.mark.parametrize("method, options", [("mezo", {}), ("ldsd", {"lr_mu": 0.1}), ("agzo", AGZO)])
def test_data_parallel_functional_mode_follows_the_inplace_run(tmp_path, method, options):
    """No-write (functional) mode on 2 ranks: the one-process in-place trajectory, within the
    float tolerance of in place's extra roundings of θ ± ε·P (float32)."""
    results = run_ranks(tmp_path, "train", method=method, options=dict(options, mode="functional"),
                        steps=4)
    ref = reference(method=method, options=dict(options, mode="inplace"), steps=4)
    assert_same_run(results, ref)


def test_paired_forwards_on_uneven_weighted_ranks_follow_the_one_process_run(tmp_path):
    """A pair closure on 2 ranks (3 and 5 rows, each half's loss weighted by the rank's rows):
    both losses are all-reduced as two forwards' are; the one-process unpaired in-place run."""
    results = run_ranks(tmp_path, "train", method="mezo", steps=4, uneven=True, weighted=True,
                        options={"mode": "functional"}, paired=True)
    ref = reference(method="mezo", options={"mode": "inplace"}, steps=4)
    assert_same_run(results, ref)
    assert results[0]["bytes"] == 16 * results[0]["forwards"]  # (w·L, w) per counted forward


@pytest.mark.parametrize("sharded", [False, True], ids=["data-parallel", "fsdp2"])
def test_agzo_ranks_share_the_one_process_bases(tmp_path, sharded):
    """Each rank sketches its half of the batch; the summed sketches give every rank the bases
    (and so the trajectory) of one process holding the whole batch."""
    kw = dict(method="agzo", options=AGZO, steps=5)
    results = run_ranks(tmp_path, "train", sharded=sharded, **kw)
    ref = reference(**kw)
    assert_same_run(results, ref)
    for name, V in ref["bases"].items():
        assert torch.equal(results[0]["bases"][name], results[1]["bases"][name]), name
        torch.testing.assert_close(results[0]["bases"][name], V, rtol=1e-4, atol=1e-5, msg=name)
    # the losses (16 B per forward) and, at steps 0, 1, 2 and 4, the n x k sketches + token counts
    sketch = sum(4 * (V.shape[0] * min(2 + 4, V.shape[0]) + 1) for V in ref["bases"].values())
    if not sharded:
        assert results[0]["bytes"] == 16 * results[0]["forwards"] + 4 * sketch


@pytest.mark.parametrize("method, options", [("mezo", {}), ("agzo", AGZO)])
def test_ranks_that_raise_in_a_step_restore_themselves(tmp_path, method, options):
    results = run_ranks(tmp_path, "interrupted", method=method, options=options)
    for res in results:
        assert "error" not in res, res.get("traceback")
        assert res["raised"] == "data error on this rank" and res["drift"] < 1e-6
        assert res["steps"] == 2
    assert results[0]["loss"] == results[1]["loss"]


def test_uneven_shards_weighted_by_local_batch_size(tmp_path):
    kw = dict(method="mezo", options={}, steps=3, weighted=True)
    results = run_ranks(tmp_path, "train", uneven=True, **kw)
    assert_same_run(results, reference(**kw))


def test_fsdp2_perturbation_is_the_unsharded_one_bit_for_bit(tmp_path):
    results = run_ranks(tmp_path, "perturb_once", sharded=True)
    ref = reference("perturb_once", sharded=False)
    for res in results:
        assert "error" not in res, res.get("traceback")
        for name, w in ref["weights"].items():
            assert torch.equal(res["weights"][name], w), name
    # rank 1's shards start after rank 0's rows (chunks of ceil(rows / 2)), padding excluded
    assert results[1]["offsets"]["0.weight"] == 3 * 6 and results[1]["offsets"]["2.weight"] == 2 * 5
    assert results[1]["offsets"]["4.weight"] == 3  # a 1-row matrix: rank 1 holds no row
    assert all(v == 0 for v in results[0]["offsets"].values())


@pytest.mark.parametrize("method, options, tol", [
    ("mezo", {}, TOL),
    ("pgap", PGAP, TOL),  # the sharded rSVD sums S^T Q over ranks (another rounding)
    ("pgap", dict(PGAP, subspace="random"), TOL),
    ("ldsd", {"lr_mu": 0.1, "base": "momentum"}, TOL),
])
def test_fsdp2_sharded_training_matches_unsharded(tmp_path, method, options, tol):
    kw = dict(method=method, options=options, steps=4)
    results = run_ranks(tmp_path, "train", sharded=True, **kw)
    assert_same_run(results, reference(**kw), tol)


@pytest.mark.parametrize("llama", [False, True], ids=["mlp", "llama-tied"])
@pytest.mark.parametrize("method, options", [("mezo", {}), ("mezo-gv", {})])
def test_fsdp2_functional_mode_follows_the_unsharded_inplace_run(tmp_path, method, options, llama):
    """No-write mode on FSDP2 shards: the views copy the unsharded parameters inside FSDP2's
    unshard (global indices), the update writes the shards; the one-process in-place run within
    float tolerance."""
    kw = dict(method=method, steps=3, llama=llama)
    results = run_ranks(tmp_path, "train", sharded=True, options=dict(options, mode="functional"), **kw)
    assert_same_run(results, reference(options=dict(options, mode="inplace"), **kw))


# P-GAP at MeZO's lr on the tiny Llama (3e-3, tests/optimizers/test_optimizers.py): at its default
# sqrt(m·n)/r scale, 1e-2 takes steps ~3x larger, and the sharded rSVD's other rounding then
# reached 1.6e-5 in a q_proj entry (TOL's atol is 1e-5)
@pytest.mark.parametrize("method, options, lr", [("mezo", {}, 1e-2), ("pgap", PGAP, 3e-3)])
def test_fsdp2_llama_with_parameters_on_the_root_module(tmp_path, method, options, lr):
    """The root FSDP module keeps its parameters (embedding, norm, tied head) unsharded after a
    forward; the optimizer reshards so that its writes reach the next forward."""
    kw = dict(method=method, options=options, steps=3, llama=True, lr=lr)
    results = run_ranks(tmp_path, "train", sharded=True, **kw)
    assert_same_run(results, reference(**kw))


def test_different_seeds_fail_clearly_on_every_rank(tmp_path):
    results = run_ranks(tmp_path, "seed_mismatch")
    for res in results:
        assert res.get("error") == "ValueError", res
        assert "disagree" in res["message"] and "seed" in res["message"]


def test_nonfinite_loss_on_one_rank_raises_on_every_rank(tmp_path):
    results = run_ranks(tmp_path, "nonfinite")
    for res in results:
        assert "error" not in res, res.get("traceback")
        assert res["raised"] and "nan" in res["raised"]
        assert res["drift"] < 1e-6  # θ+ε·z−2ε·z+ε·z: restored up to fp32 rounding
