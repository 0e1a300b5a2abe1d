"""Stream keys from names (pgap_kernels.name_keys) and the weight-decay rules (issue 26 items 2, 3).

Keys identify tensors across perturb_ calls: a hand-written MeZO loop that splits the model into
weight-decay groups is correct only with name keys, and with them it is pgap.MeZO bit for bit."""
import pytest
import torch

import pgap
import pgap_kernels as pk
from zo_problems import tiny_llama


def test_name_keys_are_fnv1a32_of_each_name():
    # FNV-1a 32 reference values: "" -> offset basis, "a" -> 0xE40C292C, "foobar" -> 0xBF9CF968
    assert pk.fnv1a32("") == 0x811C9DC5
    assert pk.name_keys(["a", "foobar"]) == [0xE40C292C, 0xBF9CF968]
    assert pgap.fnv1a32 is pk.fnv1a32 and pgap.name_keys is pk.name_keys
    names = ["model.layers.0.mlp.up_proj.weight", "lm_head.weight"]
    assert pk.name_keys(iter(names)) == [pk.fnv1a32(n) for n in names]


def test_name_keys_errors():
    with pytest.raises(TypeError, match="names must be a sequence of str, got str"):
        pk.name_keys("model.weight")
    with pytest.raises(TypeError, match=r"names\[1\] must be a str, got int"):
        pk.name_keys(["a", 3])
    with pytest.raises(ValueError, match=r"names\[2\] 'a' appears twice"):
        pk.name_keys(["a", "b", "a"])
    with pytest.raises(ValueError, match="names 'layer822778.weight' and 'layer1148682.weight' hash "
                                         "to the same stream key; rename one of them"):
        pk.name_keys(["layer822778.weight", "layer1148682.weight"])


def _mezo_by_hand(model, closure, *, lr, eps, wd, seed, steps, decays):
    """MeZO in three perturb_ passes (the README's loop): the update split into weight-decay
    groups, every call keyed by name."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    keys = pk.name_keys(n for n, _ in named)
    groups = [[i for i, (n, p) in enumerate(named) if decays(n, p) == d] for d in (True, False)]
    losses = []
    with torch.no_grad():
        for step in range(steps):
            s = pgap.derive_seed(seed, step)
            pk.perturb_(params, s, eps, keys=keys)
            plus = closure().item()
            pk.perturb_(params, s, -2 * eps, keys=keys)
            minus = closure().item()
            g = (plus - minus) / (2 * eps)
            for group, d in zip(groups, (1 - lr * wd, 1.0)):
                pk.perturb_([params[i] for i in group], s, d * eps - lr * g,
                            keys=[keys[i] for i in group], decay=d)
            losses.append((plus + minus) / 2)
    return losses


@pytest.mark.parametrize("rule", [pgap.pgap_decay_rule, pgap.mezo_decay_rule])
def test_hand_written_loop_with_name_keys_is_pgap_mezo_bit_for_bit(rule):
    model_a, loss_a = tiny_llama(0)
    model_b, loss_b = tiny_llama(0)
    opt = pgap.MeZO(model_a, lr=1e-2, eps=1e-3, weight_decay=0.5, seed=7, decay_filter=rule,
                    mode="inplace")
    losses_a = [opt.step(loss_a) for _ in range(3)]
    losses_b = _mezo_by_hand(model_b, loss_b, lr=1e-2, eps=1e-3, wd=0.5, seed=7, steps=3,
                             decays=rule)
    assert losses_a == losses_b
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), name


def test_split_calls_without_keys_draw_the_wrong_z():
    """What name keys prevent: a second call's tensors get list positions 0, 1, ... again."""
    model, _ = tiny_llama(0)
    named = [(n, p) for n, p in model.named_parameters()]
    before = [p.detach().clone() for _, p in named]
    params = [p for _, p in named]
    first, rest = params[:3], params[3:]
    with torch.no_grad():
        pk.perturb_(params, 5, 1e-3)              # one call: keys 0..P-1
        pk.perturb_(first, 5, -1e-3)              # keys 0, 1, 2: right
        pk.perturb_(rest, 5, -1e-3)               # keys 0, 1, ... again: wrong z
    assert max((p - b).abs().max().item() for p, b in zip(rest, before[3:])) > 1e-4
    keys = pk.name_keys(n for n, _ in named)
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
        pk.perturb_(params, 5, 1e-3, keys=keys)
        pk.perturb_(first, 5, -1e-3, keys=keys[:3])
        pk.perturb_(rest, 5, -1e-3, keys=keys[3:])
    for p, b in zip(params, before):
        torch.testing.assert_close(p, b, rtol=0, atol=1e-6)


def test_decay_rules_pgap_default_and_mezo_exact():
    model, _ = tiny_llama(0)
    named = dict(model.named_parameters())
    pgap_rule = {n for n, p in named.items() if pgap.pgap_decay_rule(n, p)}
    mezo_rule = {n for n, p in named.items() if pgap.mezo_decay_rule(n, p)}
    # Llama's norms are named *_layernorm / model.norm: MeZO's test catches only the first.
    assert "model.norm.weight" in mezo_rule and "model.norm.weight" not in pgap_rule
    assert not any("layernorm" in n for n in mezo_rule | pgap_rule)
    assert mezo_rule - pgap_rule == {"model.norm.weight"}
    # MeZO's rule is its substring test, case-sensitive and blind to shape
    w = torch.zeros(3)
    assert pgap.mezo_decay_rule("fc.Bias", w) and not pgap.mezo_decay_rule("fc.bias", w)
    assert not pgap.mezo_decay_rule("enc.layer_norm.weight", torch.zeros(3, 3))
    # the optimizers default to pgap's rule
    opt = pgap.MeZO(model, lr=1e-3)
    assert {t.name for t in opt.trainables if t.decays} == pgap_rule
    opt = pgap.MeZO(model, lr=1e-3, decay_filter=pgap.mezo_decay_rule)
    assert {t.name for t in opt.trainables if t.decays} == mezo_rule
