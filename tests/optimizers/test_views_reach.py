"""Functional mode refuses, at the first step, trainable parameters that the forward did not
read through the module that owns them: perturbed views would show them nothing and they would
never train, silently (issue 23, item 4)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pgap


def _model_and_closure(direct: bool):
    torch.manual_seed(0)
    model = nn.ModuleDict({"first": nn.Linear(4, 4), "second": nn.Linear(4, 3)}).to(torch.bfloat16)
    x = torch.randn(8, 4).to(torch.bfloat16)

    def closure():
        h = model["first"](x)
        if direct:  # reads the second layer's weights without calling it
            out = F.linear(h, model["second"].weight, model["second"].bias)
        else:
            out = model["second"](h)
        return (out.float() ** 2).mean()

    return model, closure


@pytest.mark.parametrize("method", ["mezo", "ldsd"])
def test_a_weight_read_outside_its_module_is_refused_and_nothing_changes(method):
    model, closure = _model_and_closure(direct=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cls = {"mezo": pgap.MeZO, "ldsd": pgap.LDSD}[method]
    opt = cls(model, lr=1e-2, mode="functional")
    with pytest.raises(ValueError, match=r"second\.weight, second\.bias.*mode='inplace'"):
        opt.step(closure)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert opt.steps_done == 0


def test_in_place_and_a_well_formed_closure_train():
    for direct, mode in ((True, "inplace"), (False, "functional")):
        model, closure = _model_and_closure(direct)
        before = model["second"].weight.detach().clone()
        opt = pgap.MeZO(model, lr=1e-2, mode=mode)
        for _ in range(3):
            opt.step(closure)
        assert not torch.equal(model["second"].weight, before), (direct, mode)
