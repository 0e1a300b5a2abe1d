"""Paired forwards (pgap.paired): both points of the two-point pair in one forward over the batch
stacked twice, each parameter-owning module running once per half with its θ ± ε·d copies."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pgap
from pgap.base import NonFiniteLossError
from pgap.paired import join_halves, mirror_, pair_losses, split_halves

from zo_problems import tiny_llama, weights

# loss tolerance between one forward at 2B rows and two at B rows (matmul blocking differs)
LOSS_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-3}


def _llama(dtype, tie=True):
    model, _ = tiny_llama(0, tie=tie)
    model.to(dtype)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))

    def per_example(input_ids):
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none").mean(dim=1)

    def closure():
        return per_example(ids).mean()

    def pair():
        return per_example(torch.cat([ids, ids])).view(2, -1).mean(dim=1)

    return model, closure, pair


def _restore(model, w0):
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(w0[k])


def _run(model, closure, pair, steps, method=pgap.MeZO, copies=None, **kw):
    opt = method(model, lr=1e-3, eps=1e-2, seed=5, mode="functional", **kw)
    if copies is not None:
        opt.pair_copies = copies
    diags = []
    for _ in range(steps):
        opt.step(closure, pair_closure=pair) if pair is not None else opt.step(closure)
        diags.append(opt.diagnostics())
    opt.close()
    return diags, opt


@pytest.mark.parametrize("tie", [True, False])
def test_paired_draw_equals_the_unpaired_step_in_float32(tie):
    model, closure, pair = _llama(torch.float32, tie)
    w0 = weights(model)
    ref, _ = _run(model, closure, None, 3)
    w_ref = weights(model)
    _restore(model, w0)
    got, opt = _run(model, closure, pair, 3, copies="draw")
    assert opt.forwards == 6
    for a, b in zip(ref, got):
        for key in ("loss_plus", "loss_minus"):
            assert math.isclose(a[key], b[key], rel_tol=0, abs_tol=LOSS_TOL[torch.float32]), key
        assert math.isclose(a["projected_grad"], b["projected_grad"], rel_tol=1e-3, abs_tol=1e-4)
    for k, v in weights(model).items():
        torch.testing.assert_close(v, w_ref[k], rtol=0, atol=1e-6)
        assert not torch.equal(v, w0[k]) or k.endswith("norm.weight"), k  # the step moved it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("copies", ["draw", "mirror"])
def test_paired_losses_match_the_unpaired_points(dtype, copies):
    model, closure, pair = _llama(dtype)
    w0 = weights(model)
    ref, _ = _run(model, closure, None, 1)
    _restore(model, w0)
    got, _ = _run(model, closure, pair, 1, copies=copies)
    # mirror in bf16: the − copy is 2θ − round(θ + εd), off from round(θ − εd) by an ulp of θ on a
    # few % of the elements, which moves the loss by as much as ε·d does (docs/optimizers.md)
    tol = LOSS_TOL[dtype] * (4 if copies == "mirror" and dtype != torch.float32 else 1)
    assert math.isclose(ref[0]["loss_plus"], got[0]["loss_plus"], abs_tol=LOSS_TOL[dtype])
    assert math.isclose(ref[0]["loss_minus"], got[0]["loss_minus"], abs_tol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mirror_is_two_theta_minus_plus(dtype):
    g = torch.Generator().manual_seed(0)
    theta = (torch.randn(4097, generator=g) * 0.05).to(dtype)
    d = torch.randn(4097, generator=g) * 1e-3
    plus = (theta.float() + d).to(dtype)
    out = torch.empty_like(theta)
    mirror_(out, plus, theta)
    exact = 2 * theta.double() - plus.double()
    if dtype != torch.float32:  # float32 arithmetic, then one rounding to bf16/fp16
        assert torch.equal(out, exact.to(dtype))
    # symmetric about θ: θ − out equals plus − θ up to the rounding of out
    ulp = {torch.float32: 2 ** -23, torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}[dtype]
    scale = torch.maximum(out.double().abs(), plus.double().abs())
    assert ((out.double() - exact).abs() <= 2 * ulp * scale).all()


def test_nested_owners_split_once_and_use_their_half_copies():
    """A module owning a parameter and a child Linear: the child runs inside its parent's halves."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(6))
            self.inner = nn.Linear(6, 6)

        def forward(self, x):
            return self.inner(x) * self.scale

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), Scaled(), nn.Linear(6, 2))
    x = torch.randn(8, 5)
    closure = lambda: (model(x) ** 2).mean()  # noqa: E731
    pair = lambda: (model(torch.cat([x, x])) ** 2).mean(dim=1).view(2, -1).mean(dim=1)  # noqa: E731
    w0 = weights(model)
    ref, _ = _run(model, closure, None, 2)
    _restore(model, w0)
    got, _ = _run(model, closure, pair, 2, copies="draw")
    for a, b in zip(ref, got):
        assert math.isclose(a["loss_plus"], b["loss_plus"], abs_tol=1e-6)
        assert math.isclose(a["loss_minus"], b["loss_minus"], abs_tol=1e-6)


@pytest.mark.parametrize("method, kw", [(pgap.LDSD, {"num_probes": 2}), (pgap.MeZOGV, {"num_probes": 2})])
def test_probing_methods_take_a_pair_closure(method, kw):
    model, closure, pair = _llama(torch.float32)
    w0 = weights(model)
    ref, _ = _run(model, closure, None, 2, method=method, **kw)
    _restore(model, w0)
    got, _ = _run(model, closure, pair, 2, method=method, copies="draw", **kw)
    for a, b in zip(ref, got):
        assert math.isclose(a["loss_plus"], b["loss_plus"], abs_tol=1e-5)
        assert math.isclose(a["loss_minus"], b["loss_minus"], abs_tol=1e-5)


def _unchanged(model, w0):
    for k, v in weights(model).items():
        assert torch.equal(v, w0[k]), k


def test_refusals_leave_every_weight_untouched():
    model, closure, pair = _llama(torch.float32)
    w0 = weights(model)
    with pytest.raises(ValueError, match="mode='functional'"):
        pgap.MeZO(model, lr=1e-3, mode="inplace").step(closure, pair_closure=pair)
    _unchanged(model, w0)
    opt = pgap.MeZO(model, lr=1e-3, mode="functional")
    with pytest.raises(TypeError, match="pair_closure must be callable"):
        opt.step(closure, pair_closure=3)
    with pytest.raises(ValueError, match="pair_copies"):
        opt.pair_copies = "copy"
    # a pair closure that does not double the batch: the embedding's halves differ
    with pytest.raises(ValueError, match="two different halves of token ids"):
        opt.step(closure, pair_closure=lambda: torch.stack([closure(), closure()]))
    _unchanged(model, w0)
    # an odd batch
    ids = torch.randint(0, 64, (3, 16))
    with pytest.raises(ValueError, match="3 leading rows, expected an even number"):
        opt.step(closure, pair_closure=lambda: model(input_ids=ids, labels=ids).loss.repeat(2))
    _unchanged(model, w0)
    with pytest.raises(TypeError, match="two halves' losses"):
        opt.step(closure, pair_closure=lambda: torch.zeros(3))
    _unchanged(model, w0)
    with pytest.raises(NonFiniteLossError, match="paired forward"):
        opt.step(closure, pair_closure=lambda: pair() * torch.tensor([1.0, float("nan")]))
    _unchanged(model, w0)
    assert opt.steps_done == 0 and opt.forwards == 0  # failed steps count nothing
    assert all("forward" not in m.__dict__ for m in model.modules())  # the half runners are gone
    opt.step(closure, pair_closure=pair)  # and the optimizer still steps
    assert opt.steps_done == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method, kw, forwards", [
    (pgap.AGZO, dict(refresh=2), 1 + 2 * 5),
    (pgap.PGAP, dict(subspace="activation", probes=2, window=3), 2 * 2 * 2 + 2 * 5),
    (pgap.PGAP, dict(subspace="probe", probes=2, window=3), 2 * 2 * 2 + 2 * 5),
    (pgap.SubZero, dict(window=3), 2 * 5)])
def test_lowrank_functional_paired_follows_the_unpaired_run(dtype, method, kw, forwards):
    """AGZO, P-GAP and SubZero: the side paths take +ε·P on the first half and −ε·P on the second
    (x·V once over both). AGZO: the first step's basis forward, then its refreshes (every 2
    steps) sketch the first half; P-GAP: the probes of each window (2 at steps 0 and 3 of 5)
    stay unpaired. float32: the same trajectory; bf16: within one ulp of the norm weights (~1)
    after 5 steps."""
    model, closure, pair = _llama(dtype)
    w0 = weights(model)
    kw = dict(method=method, rank=2, **kw)
    ref, _ = _run(model, closure, None, 5, **kw)
    w_ref = weights(model)
    _restore(model, w0)
    got, opt = _run(model, closure, pair, 5, **kw)
    assert opt.forwards == forwards
    for a, b in zip(ref, got):
        for key in ("loss_plus", "loss_minus"):
            assert math.isclose(a[key], b[key], abs_tol=LOSS_TOL[dtype] * 2), key
    atol = 1e-6 if dtype == torch.float32 else 2 ** -7
    for k, v in weights(model).items():
        torch.testing.assert_close(v.float(), w_ref[k].float(), rtol=0, atol=atol)


def test_in_place_agzo_and_pgap_refuse_a_pair_closure():
    model, closure, pair = _llama(torch.float32)
    w0 = weights(model)
    for opt in (pgap.AGZO(model, lr=1e-3, rank=2, mode="inplace"), pgap.PGAP(model, lr=1e-3, rank=2)):
        with pytest.raises(ValueError, match="pair_closure"):
            opt.step(closure, pair_closure=pair)
    _unchanged(model, w0)


def test_split_join_and_pair_losses():
    x, y = torch.arange(8).view(4, 2), torch.ones(3)
    a, b = split_halves((x, {"k": x, "other": y}, 7), 4)
    assert torch.equal(a[0], x[:2]) and torch.equal(b[1]["k"], x[2:]) and a[1]["other"] is y and b[2] == 7
    assert torch.equal(join_halves((x[:2], None), (x[2:], None), "m")[0], x)
    with pytest.raises(ValueError, match="cannot be joined"):
        join_halves(1, 2, "m")
    assert pair_losses(torch.tensor([1.0, 2.0]))[1] == 1.0
    (lp, lm), w = pair_losses((torch.tensor([1.0, 2.0]), 8))
    assert (float(lp), float(lm), w) == (1.0, 2.0, 8.0)
    assert pair_losses((0.5, 0.25)) == ((0.5, 0.25), 1.0)


def test_auto_pair_copies_mirror_float32_and_draw_bf16():
    """pair_copies="auto": float32 parameters mirrored (one pass), bf16 ones drawn (the unpaired
    numbers): the bf16 run's losses equal the "draw" run's bit for bit."""
    for dtype, same_as in ((torch.bfloat16, "draw"), (torch.float32, "mirror")):
        model, closure, pair = _llama(dtype)
        w0 = weights(model)
        runs = {}
        for copies in ("auto", same_as):
            _restore(model, w0)
            runs[copies], opt = _run(model, closure, pair, 2, copies=copies)
            assert opt.pair_copies == copies
        assert [(d["loss_plus"], d["loss_minus"]) for d in runs["auto"]] == \
            [(d["loss_plus"], d["loss_minus"]) for d in runs[same_as]], dtype


@pytest.mark.parametrize("tie", [False, True])
def test_drawn_minus_copies_are_the_unpaired_numbers_bit_for_bit(tie):
    """bf16, pair_copies "draw": inside the paired forward every module sees exactly
    perturbed(θ, seed, −ε) as its − copy. Untied parameters get both copies from one
    perturbed_many call with out_minus (one draw of z on the CPU); a tied one the two-call path."""
    import pgap_kernels as pk
    model, _, pair = _llama(torch.bfloat16, tie)
    opt = pgap.MeZO(model, lr=1e-3, eps=1e-2, seed=5, mode="functional")
    opt.pair_copies = "draw"
    views, seen = opt.views, []
    by_name = views._by_name

    def check(module, inputs):
        for name, minus in list(views._minus.items()):
            if name not in views._swapped:  # a tied parameter's − copy between its two modules
                continue
            t = by_name[name]
            theta = views._swapped[name][1]
            want = pk.perturbed(theta, list(views.seeds), [-c for c in views.coeffs], key=t.key,
                                offset=t.offset)
            assert torch.equal(minus.view(torch.int16), want.view(torch.int16)), name
            seen.append(name)

    # registered after the views' hooks, so each runs once the module's copies are in place
    handles = [m.register_forward_pre_hook(check) for m in model.modules()]
    opt.step(lambda: pair().mean(), pair_closure=pair)
    for h in handles:
        h.remove()
    assert set(seen) == set(by_name)
