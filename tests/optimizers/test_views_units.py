"""Perturbed views hook *units* (issue 23, item 4): with unit="block" a decoder layer's
parameters are copied in one ``perturbed_many`` call when the layer's forward starts, instead of
one call per parameter. Same numbers as per-module views, bit for bit, for every optimizer with
views; fewer calls; the memory of one unit; the first-step check still names a parameter whose
module ran outside its unit's forward."""
import pytest
import torch
from torch import nn

import pgap
import pgap_kernels
from pgap import views as views_mod
from pgap.params import collect_trainable
from zo_problems import tiny_llama, weights

OPTIMIZERS = {
    "mezo": lambda m: pgap.MeZO(m, lr=1e-3, eps=1e-2, mode="functional"),
    "ldsd": lambda m: pgap.LDSD(m, lr=1e-3, eps=1e-2, mode="functional"),
    "agzo": lambda m: pgap.AGZO(m, lr=1e-3, eps=1e-2, mode="functional"),
}


def _run(name, share, monkeypatch, steps=3):
    """Train the bf16 tiny Llama ``steps`` steps with unit budgets of total/``share``; return the
    weights, the losses and the optimizer."""
    monkeypatch.setattr(views_mod, "BLOCK_SHARE", share)
    model, closure = tiny_llama()
    model.to(torch.bfloat16)
    opt = OPTIMIZERS[name](model)
    losses = [opt.step(closure) for _ in range(steps)]
    return weights(model), losses, opt


def test_block_units_of_a_decoder():
    model, _ = tiny_llama()
    trainables = collect_trainable(model, None)
    total = sum(t.param.numel() * t.param.element_size() for t in trainables)
    units = views_mod.find_units(model, trainables, "block", budget=total // 2)
    assert [type(m).__name__ for m, _ in units] == [
        "Embedding", "LlamaDecoderLayer", "LlamaDecoderLayer", "LlamaRMSNorm", "Linear"]
    assert len(units[1][1]) == 9  # 7 matrices, 2 norms
    module_units = views_mod.find_units(model, trainables, "module")
    assert len(module_units) == 21
    # every (owner, name) appears exactly once in either cut; the tied weight in two owners
    for cut in (units, module_units):
        pairs = [(id(owner), pname) for _, entries in cut for owner, pname, _ in entries]
        assert len(pairs) == len(set(pairs)) == 21


def test_default_budget_makes_layers_units_in_a_deep_model():
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16)) for _ in range(32)])
    model = nn.Sequential(nn.Embedding(50, 16), blocks, nn.Linear(16, 50))
    units = views_mod.find_units(model, collect_trainable(model, None))
    assert [type(m).__name__ for m, _ in units] == ["Embedding"] + ["Sequential"] * 32 + ["Linear"]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_blocks_and_modules_train_bit_identically(name, monkeypatch):
    w_block, l_block, opt_block = _run(name, 2, monkeypatch)
    w_module, l_module, opt_module = _run(name, 1 << 40, monkeypatch)
    assert l_block == l_module
    for k in w_block:
        assert torch.equal(w_block[k].view(torch.int16), w_module[k].view(torch.int16)), k
    assert opt_block.views.calls < opt_module.views.calls


def test_one_call_per_unit_and_forward_and_one_unit_of_memory(monkeypatch):
    _, _, opt = _run("mezo", 2, monkeypatch, steps=1)
    # 2 forwards x (embedding + 2 layers + norm); lm_head reuses the tied embedding's kept copy
    assert opt.views.calls == 2 * 4
    layer = sum(p.numel() * p.element_size() for p in opt.model.model.layers[0].parameters())
    embedding = opt.model.model.embed_tokens.weight
    kept = embedding.numel() * embedding.element_size()
    assert opt.views.peak_bytes <= layer + 64 * 9 + kept


class Bypassed(nn.Module):
    """A model whose forward calls a block's sub-layer directly, never the block itself."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 64)

    def forward(self, x):
        return self.head(self.block[1](self.block[0](self.first(x))))


def test_a_module_run_outside_its_unit_is_refused(monkeypatch):
    monkeypatch.setattr(views_mod, "BLOCK_SHARE", 2)  # the block is a unit, the model is not
    torch.manual_seed(0)
    model = Bypassed().to(torch.bfloat16)
    x = torch.randn(8, 4).to(torch.bfloat16)
    before = weights(model)
    opt = pgap.MeZO(model, lr=1e-2, mode="functional")
    units = [type(m).__name__ for m, _ in views_mod.find_units(model, opt.trainables)]
    assert units == ["Linear", "Sequential", "Linear"]
    with pytest.raises(ValueError, match=r"block\.0\.weight, block\.0\.bias, block\.1\.weight"):
        opt.step(lambda: (model(x).float() ** 2).mean())
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())


def test_witness_hooks_go_after_the_first_step(monkeypatch):
    _, _, opt = _run("mezo", 2, monkeypatch, steps=1)
    assert opt.views._witnesses == []
    q = opt.model.model.layers[0].self_attn.q_proj
    assert len(q._forward_pre_hooks) == 0  # only the layer (the unit) is hooked now


def test_unit_plans_are_reused_and_remade_when_a_parameter_changes():
    """Each unit's copies are filled by PerturbedManyPlans made on its first perturbed forward and
    reused by the next ones; a parameter given new ``.data`` gets its unit a new plan. The
    forwards see exactly what ``perturb_`` in place writes, before and after the change."""
    model, closure = tiny_llama()
    model.to(torch.bfloat16)
    trainables = collect_trainable(model, None)
    views = views_mod.PerturbedViews(model, trainables)
    seeds, coeffs = [5, 6], [1e-2, -2e-2]

    def viewed_loss():
        views.show(seeds, coeffs)
        with torch.no_grad():
            loss = closure()
        views.hide()
        return loss

    def in_place_loss():
        saved = weights(model)
        with torch.no_grad():
            pgap_kernels.perturb_([t.param for t in trainables], seeds, coeffs,
                                  keys=[t.key for t in trainables], offsets=[t.offset for t in trainables])
            loss = closure()
            for k, p in model.named_parameters():
                p.copy_(saved[k])
        return loss

    def plans():
        return {key: [plan for plan, _ in unit.plans] for key, unit in views._plans.items()}

    def same(a, b):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))

    first = viewed_loss()  # the arena grows during the first forward (older plans dropped)
    assert torch.equal(viewed_loss(), first)
    made = plans()
    # one plan per unit, but for lm_head: the tied embedding's copy is kept from its first unit
    assert sum(map(len, made.values())) == len(made) - 1
    assert torch.equal(viewed_loss(), first)
    again = plans()
    assert again.keys() == made.keys() and all(same(made[k], again[k]) for k in made)
    assert torch.equal(first, in_place_loss())

    q = model.model.layers[0].self_attn.q_proj.weight
    q.data = q.data * 2  # new memory, same shape and dtype
    changed = viewed_loss()
    assert torch.equal(changed, in_place_loss()) and not torch.equal(changed, first)
    now = plans()
    remade = [key for key in now if not same(now[key], made.get(key, []))]
    assert len(remade) == 1 and "model.layers.0.self_attn.q_proj.weight" in remade[0][0]
    views.remove()
