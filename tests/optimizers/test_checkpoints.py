"""Checkpoints that do not disturb the trajectory: inside ``opt.unmerged()`` the model's weights
are taken without the side paths' pending updates, which the optimizer's state carries. A run
that saves at step k, the same run continued, and a run resumed from that save are bit for bit
the run that never saved, for every optimizer and setting of the golden cases (in place,
functional with side paths and views, float32 and bf16). Outside the block ``state_dict()``
still merges (an exported model holds the trained weights) and such checkpoints still load."""
import json

import pytest
import torch

import golden_cases as gc
import pgap
from zo_problems import loss_of, mlp_problem, weights

# P-GAP's windows start (merge) at steps 0, 2, 4; AGZO refreshes (merges) after steps 0, 1, 2, 4:
# at the save the side paths hold updates, and the continuation merges them at step 4
STEPS, SAVE_AT = 6, 4
CASES = [(o, s) for o in gc.OPTIMIZERS for s in gc.SETTINGS]


def build(optimizer, setting):
    dtype, kwargs = gc.SETTINGS[setting]
    model, closure = mlp_problem(seed=0, dtype=dtype)
    return model, closure, gc.OPTIMIZERS[optimizer](model, **kwargs)


def unmerged_state(opt):
    """The optimizer's state with its pending updates (taken inside ``unmerged``)."""
    with opt.unmerged():
        return opt.state_dict()


def assert_same_run(a, b):
    """Same losses, raw weights (pending updates not merged) and optimizer state."""
    (losses_a, model_a, opt_a), (losses_b, model_b, opt_b) = a, b
    assert losses_a == losses_b
    for k, w in weights(model_a).items():
        assert torch.equal(w, weights(model_b)[k]), k
    sa, sb = unmerged_state(opt_a), unmerged_state(opt_b)
    assert (sa["step"], sa["forwards"]) == (sb["step"], sb["forwards"])
    assert json.dumps(sa["extra"], sort_keys=True) == json.dumps(sb["extra"], sort_keys=True)
    assert sa["tensors"].keys() == sb["tensors"].keys()
    for k, v in sa["tensors"].items():
        assert torch.equal(v, sb["tensors"][k]), k


@pytest.mark.parametrize("optimizer, setting", CASES, ids=[f"{o}/{s}" for o, s in CASES])
def test_saving_unmerged_leaves_the_trajectory_and_resumes_it(tmp_path, optimizer, setting):
    model, closure, opt = build(optimizer, setting)
    uninterrupted = ([opt.step(closure) for _ in range(STEPS)], model, opt)

    model, closure, opt = build(optimizer, setting)
    losses = [opt.step(closure) for _ in range(SAVE_AT)]
    with opt.unmerged():
        torch.save(model.state_dict(), tmp_path / "model.pt")
        pgap.save_optimizer(opt, tmp_path / "opt.safetensors")
    losses += [opt.step(closure) for _ in range(STEPS - SAVE_AT)]
    assert_same_run((losses, model, opt), uninterrupted)  # (a) saving changed nothing

    model, closure, opt = build(optimizer, setting)
    model.load_state_dict(torch.load(tmp_path / "model.pt"))
    pgap.load_optimizer(opt, tmp_path / "opt.safetensors")
    assert opt.steps_done == SAVE_AT
    resumed = [opt.step(closure) for _ in range(STEPS - SAVE_AT)]
    assert_same_run((uninterrupted[0][:SAVE_AT] + resumed, model, opt), uninterrupted)  # (b)


@pytest.mark.parametrize("optimizer", ["pgap-probe", "agzo"])
def test_the_unmerged_state_holds_the_pending_updates_and_plain_state_dict_merges(optimizer):
    model, closure, opt = build(optimizer, "bf16-functional")
    for _ in range(SAVE_AT):
        opt.step(closure)
    effective = loss_of(closure)  # the forward adds the pending update through the side path
    raw = weights(model)
    state = unmerged_state(opt)
    pending = {k for k in state["tensors"] if k.endswith(".A")}
    assert pending and pending <= {f"{s.trainable.name}.A" for s in opt.side.states}
    with opt.unmerged():
        unmerged = model.state_dict()
    assert all(torch.equal(unmerged[k], w) for k, w in raw.items())  # nothing merged, nothing moved
    merged = model.state_dict()  # outside the block: the trained weights, for export
    assert any(not torch.equal(merged[k], w) for k, w in raw.items())
    assert not any(k.endswith(".A") for k in opt.state_dict()["tensors"])  # nothing pending now
    assert loss_of(closure) == pytest.approx(effective, rel=1e-2)


def test_unmerged_nests_and_restores_merging_after_an_error():
    model, closure, opt = build("agzo", "bf16-functional")
    for _ in range(SAVE_AT):
        opt.step(closure)
    raw = weights(model)
    with pytest.raises(RuntimeError), opt.unmerged():
        with opt.unmerged():
            model.state_dict()
        model.state_dict()
        raise RuntimeError("writer failed")
    assert all(torch.equal(w, raw[k]) for k, w in weights(model).items())
    model.state_dict()
    assert any(not torch.equal(w, raw[k]) for k, w in weights(model).items())


@pytest.mark.parametrize("optimizer", ["pgap-probe", "agzo"])
def test_a_merged_checkpoint_still_resumes_as_the_run_that_saved_it(tmp_path, optimizer):
    """A state taken outside ``unmerged`` (as every state was before: the weights merged, no
    pending tensors) loads, and the resumed run follows the run that saved it."""
    model, closure, opt = build(optimizer, "bf16-functional")
    for _ in range(SAVE_AT):
        opt.step(closure)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}  # merges
    state = opt.state_dict()
    assert state["format"] == "pgap.optimizer/1"
    assert not any(k.endswith(".A") for k in state["tensors"])
    live = ([opt.step(closure) for _ in range(STEPS - SAVE_AT)], model, opt)
    model2, closure2, opt2 = build(optimizer, "bf16-functional")
    model2.load_state_dict(saved_model)
    opt2.load_state_dict(state)
    assert_same_run(([opt2.step(closure2) for _ in range(STEPS - SAVE_AT)], model2, opt2), live)


def test_pending_updates_need_a_side_path_to_load_into():
    model, closure, opt = build("pgap-probe", "bf16-functional")
    for _ in range(SAVE_AT):
        opt.step(closure)
    state = unmerged_state(opt)
    model2, _, opt2 = build("pgap-probe", "bf16-inplace-nearest")
    before = weights(model2)
    with pytest.warns(UserWarning, match="hyperparameters"), pytest.raises(ValueError, match=r"\.A"):
        opt2.load_state_dict(state)
    assert opt2.steps_done == 0
    assert all(torch.equal(w, before[k]) for k, w in weights(model2).items())
