"""Functional mode inside torch.autocast: the float32 parameters of plain nn.Linear modules are
copied straight into the autocast dtype (pgap.views, "Copies in the autocast dtype"). The step is
bit for bit the one whose copies stay float32 and are cast by autocast (``narrow=False``), for
every functional optimizer and for paired forwards; nothing else is narrowed (embeddings, norms,
tied weights, bf16 weights, forwards outside autocast); the copies take half the bytes."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pgap
from pgap.dtypes import compute_context
from pgap.methods import build_optimizer

from zo_problems import mlp_problem, tiny_llama

PGAP = {"rank": 2, "window": 2, "probes": 2}
FUNCTIONAL = [
    ("mezo", {}), ("mezo", {"distribution": "rademacher"}), ("mezo-gv", {"num_probes": 2}),
    ("ldsd", {"num_probes": 2, "lr_mu": 0.1}),
    ("pgap", dict(PGAP, subspace="activation")),
    ("agzo", {"rank": 2, "refresh": 2, "first_iters": 0}),
]
IDS = [m + ("-rademacher" if o.get("distribution") else "") for m, o in FUNCTIONAL]
HALF = [torch.bfloat16, torch.float16]


def _autocast_closure(closure, dtype):
    def run():
        with compute_context(dtype, "cpu"):
            return closure()
    return run


def _weight_dtypes(model):
    """A pre-hook on every nn.Linear recording the dtype of the weight its forward reads."""
    seen = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_pre_hook(lambda mod, _: seen.append(mod.weight.dtype))
    return seen


def _train(method, options, dtype, narrow, steps=3, problem=mlp_problem, pair=False, copies=None):
    model, closure = problem(3)
    opt = build_optimizer(method, model, lr=1e-2, eps=1e-2, seed=1, mode="functional", **options)
    opt.views.narrow = narrow
    if copies is not None:
        opt.pair_copies = copies
    seen = _weight_dtypes(model)
    run = _autocast_closure(closure, dtype)
    diags = []
    for _ in range(steps):
        if pair:
            opt.step(run, pair_closure=_autocast_closure(pair(model), dtype))
        else:
            opt.step(run)
        diags.append(opt.diagnostics()["projected_grad"])
    peak = opt.views.peak_bytes
    opt.close()
    return [p.detach().clone() for p in model.parameters()], diags, set(seen), peak


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("method, options", FUNCTIONAL, ids=IDS)
def test_narrow_copies_give_the_steps_autocast_gives(method, options, dtype):
    w_narrow, g_narrow, seen_narrow, _ = _train(method, options, dtype, narrow=True)
    w_wide, g_wide, seen_wide, _ = _train(method, options, dtype, narrow=False)
    assert all(g != 0 for g in g_narrow) and g_narrow == g_wide
    assert all(torch.equal(a, b) for a, b in zip(w_narrow, w_wide))
    assert all(w.dtype == torch.float32 for w in w_narrow)  # the stored weights stay float32
    if method not in ("pgap", "agzo"):  # their matrices take side paths: the forward reads θ
        assert seen_narrow == {dtype} and seen_wide == {torch.float32}


def _linear_only(seed):
    """mlp_problem with only its nn.Linear parameters trainable."""
    model, closure = mlp_problem(seed)
    for m in model.modules():
        if type(m) is not nn.Linear:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    return model, closure


def test_narrow_copies_take_half_the_bytes():
    *_, narrow_peak = _train("mezo", {}, torch.bfloat16, narrow=True, steps=1, problem=_linear_only)
    *_, wide_peak = _train("mezo", {}, torch.bfloat16, narrow=False, steps=1, problem=_linear_only)
    # each copy starts on a 64-byte line: at most 4 parameters' padding apart from one half
    assert wide_peak > 0 and wide_peak / 2 - 4 * 64 <= narrow_peak <= wide_peak / 2 + 4 * 64


def test_no_narrowing_outside_autocast_nor_for_bf16_weights():
    model, closure = mlp_problem(3)
    opt = pgap.MeZO(model, lr=1e-2, eps=1e-2, mode="functional")
    seen = _weight_dtypes(model)
    opt.step(closure)
    assert set(seen) == {torch.float32}
    model16, closure16 = mlp_problem(3, torch.bfloat16)
    opt16 = pgap.MeZO(model16, lr=1e-2, eps=1e-2, mode="functional")
    seen16 = _weight_dtypes(model16)
    with compute_context(torch.bfloat16, "cpu"):  # bf16 weights under autocast: copied as they are
        opt16.step(closure16)
    assert set(seen16) == {torch.bfloat16}


def _llama_pair(model):
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(4))

    def per_example(input_ids):
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none").mean(dim=1)

    return lambda: per_example(torch.cat([ids, ids])).view(2, -1).mean(dim=1)


def _dtypes_read(model):
    """{module kind: the dtypes of the weights its forwards read}, from forward pre-hooks."""
    seen = {}
    for name, m in model.named_modules():
        kind = ("lm_head" if name == "lm_head" else "embedding" if isinstance(m, nn.Embedding)
                else "norm" if "norm" in type(m).__name__.lower() else "linear" if type(m) is nn.Linear
                else None)
        if kind:
            m.register_forward_pre_hook(lambda mod, _, k=kind: seen.setdefault(k, set()).add(mod.weight.dtype))
    return seen


@pytest.mark.parametrize("tie", [True, False])
def test_what_each_module_reads_under_autocast(tie):
    """Linear weights (lm_head too, tied or not) read bf16 copies; the embedding (tied or not) and
    the norms read float32 ones, as autocast leaves them; in a paired forward a tied lm_head
    keeps its float32 copy (one − copy per name)."""
    model, closure = tiny_llama(3, tie=tie)
    opt = pgap.MeZO(model, lr=1e-3, eps=1e-2, seed=5, mode="functional")
    seen = _dtypes_read(model)
    opt.step(_autocast_closure(closure, torch.bfloat16))
    assert seen == {"lm_head": {torch.bfloat16}, "embedding": {torch.float32},
                    "norm": {torch.float32}, "linear": {torch.bfloat16}}
    seen.clear()
    opt.step(_autocast_closure(closure, torch.bfloat16), pair_closure=_autocast_closure(_llama_pair(model), torch.bfloat16))
    assert seen["lm_head"] == ({torch.float32} if tie else {torch.bfloat16})
    opt.close()


@pytest.mark.parametrize("tie", [True, False])
def test_a_tied_lm_head_and_paired_forwards_give_the_steps_autocast_gives(tie):
    """A tied embedding / lm_head: a float32 copy for the embedding, a narrow one for lm_head,
    the step bit for bit the float32-copy one. Paired forwards: the narrow − copies are drawn
    (θ − ε·z), so the step equals the float32-copy step that draws them too."""
    problem = lambda seed: tiny_llama(seed, tie=tie)  # noqa: E731
    for pair in (None, _llama_pair):
        runs = {narrow: _train("mezo", {}, torch.bfloat16, narrow, steps=2, problem=problem,
                               pair=pair, copies="draw") for narrow in (True, False)}
        (w_n, g_n, _, _), (w_w, g_w, _, _) = runs[True], runs[False]
        assert all(g != 0 for g in g_n) and g_n == g_w
        assert all(torch.equal(a, b) for a, b in zip(w_n, w_w))


@pytest.mark.parametrize("narrow", [True, False])
def test_paired_linears_inside_autocast_compute_in_the_autocast_dtype(narrow):
    """Paired forwards' fast path for nn.Linear (one mm per half into one output) bypasses
    autocast: inside an autocast region each half runs the module's forward instead."""
    model, _ = tiny_llama(3, tie=False)
    opt = pgap.MeZO(model, lr=1e-3, eps=1e-2, seed=5, mode="functional")
    opt.views.narrow = narrow
    outputs = []
    for m in model.modules():
        if type(m) is nn.Linear:
            m.register_forward_hook(lambda mod, _, out: outputs.append(out.dtype))
    opt.step(_autocast_closure(lambda: torch.tensor(0.0), torch.bfloat16),
             pair_closure=_autocast_closure(_llama_pair(model), torch.bfloat16))
    assert outputs and set(outputs) == {torch.bfloat16}
    opt.close()


def test_paired_losses_under_autocast_match_the_unpaired_points():
    """Both points from one paired forward under bf16 autocast (nn.Linear's halves by mm into one
    output, operands cast as autocast casts them) equal the unpaired step's two forwards within
    bf16 tolerance (matmul blocking differs between B and 2B rows)."""
    runs = {}
    for pair in (None, _llama_pair):
        model, closure = tiny_llama(3, tie=True)
        opt = pgap.MeZO(model, lr=1e-3, eps=1e-2, seed=5, mode="functional")
        opt.pair_copies = "draw"
        kwargs = {} if pair is None else {"pair_closure": _autocast_closure(pair(model), torch.bfloat16)}
        ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(4))

        def per_example(m=model):
            logits = m(input_ids=ids).logits[:, :-1].float()
            return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").mean(dim=1).mean()

        opt.step(_autocast_closure(per_example, torch.bfloat16), **kwargs)
        runs[pair is None] = opt.diagnostics()
        opt.close()
    for key in ("loss_plus", "loss_minus"):
        assert runs[True][key] == pytest.approx(runs[False][key], abs=2e-3), key


def test_lora_adapters_are_narrowed_and_give_the_steps_autocast_gives():
    """PEFT LoRA adapters (lora_A / lora_B are plain nn.Linear; PEFT casts their input to
    lora_A's dtype): narrow copies give the step the float32-copy one gives, bit for bit."""
    pytest.importorskip("peft")
    from pgap.finetune.lora import apply_lora

    def lora_llama(seed):
        model, _ = tiny_llama(seed)
        model = apply_lora(model, r=2, targets=("q_proj", "v_proj"), seed=seed)
        ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(seed + 1))
        return model, lambda: model(input_ids=ids, labels=ids).loss

    runs = {narrow: _train("mezo", {}, torch.bfloat16, narrow, steps=3, problem=lora_llama)
            for narrow in (True, False)}
    (w_n, g_n, seen_n, _), (w_w, g_w, seen_w, _) = runs[True], runs[False]
    assert all(g != 0 for g in g_n) and g_n == g_w
    assert all(torch.equal(a, b) for a, b in zip(w_n, w_w))
    assert torch.bfloat16 in seen_n and torch.bfloat16 not in seen_w
