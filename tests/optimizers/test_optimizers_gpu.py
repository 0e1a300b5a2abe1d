"""Optimizers on a CUDA device: the trajectory matches the CPU one (run with `make test-gpu`)."""
import pytest
import torch

import pgap
import pgap_kernels as pk
from conftest import GPU_REASON, HAS_CUDA
from zo_problems import mlp_problem

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=GPU_REASON)]

# The forwards differ between devices in the last float32 bits; g = (L+ - L-)/(2 eps) amplifies
# that by 1/(2 eps) (see test_optimizers.TRAJECTORY_TOL), so compare a few steps only.
TOL = {"rtol": 1e-3, "atol": 2e-4}


def _run(device, backend, make, steps=3):
    torch.backends.cuda.matmul.allow_tf32 = False
    model, closure = mlp_problem()
    model.to(device)
    # the problem's tensors live in the closure on the CPU: rebuild the batch on the device
    idx = torch.randint(0, 17, (64,), generator=torch.Generator().manual_seed(0)).to(device)
    target = torch.randn(64, 5, generator=torch.Generator().manual_seed(1)).to(device)

    def closure():
        return ((model(idx) - target) ** 2).mean()

    opt = make(model, backend)
    losses = [opt.step(closure) for _ in range(steps)]
    return losses, {k: v.detach().cpu() for k, v in model.named_parameters()}


MAKERS = {
    "mezo": lambda m, b: pgap.MeZO(m, lr=1e-2, seed=1, backend=b),
    "pgap-inplace": lambda m, b: pgap.PGAP(m, lr=0.1, rank=3, probes=3, window=2, seed=1, backend=b),
    "pgap-functional": lambda m, b: pgap.PGAP(m, lr=0.1, rank=3, probes=3, window=2, seed=1,
                                              mode="functional", backend=b),
    "gv": lambda m, b: pgap.MeZOGV(m, lr=1e-2, seed=1, backend=b),
    "ldsd": lambda m, b: pgap.LDSD(m, lr=1e-2, lr_mu=0.1, seed=1, backend=b),
}


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_gpu_trajectory_matches_cpu(name, backend):
    if pk.backend_status("cuda")[backend] is not None:
        pytest.skip(f"{backend}: {pk.backend_status('cuda')[backend]}")
    cpu_losses, cpu_w = _run("cpu", "native", MAKERS[name])
    gpu_losses, gpu_w = _run("cuda", backend, MAKERS[name])
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-4)
    for k in cpu_w:
        torch.testing.assert_close(gpu_w[k], cpu_w[k], **TOL, msg=k)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("method", ["mezo", "agzo", "pgap"])
def test_gpu_paired_step_follows_the_unpaired_one(method, backend):
    """Paired forwards on the GPU (pgap.paired): the tiny Llama in float32 (tied embedding), the
    − copies drawn, 3 steps: the unpaired trajectory within the devices' float tolerance; and a
    bf16 run with mirrored copies and the bf16 side path stays finite and moves the weights."""
    if pk.backend_status("cuda")[backend] is not None:
        pytest.skip(f"{backend}: {pk.backend_status('cuda')[backend]}")
    import torch.nn.functional as F
    from zo_problems import tiny_llama

    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    for dtype, pairs in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, True)):
        model, _ = tiny_llama(0)
        model.to("cuda", dtype)
        ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1)).cuda()

        def per_example(i):
            logits = model(input_ids=i).logits[:, :-1].float()
            return F.cross_entropy(logits.transpose(1, 2), i[:, 1:], reduction="none").mean(dim=1)

        make = {"mezo": lambda: pgap.MeZO(model, lr=1e-3, eps=1e-2, seed=1, mode="functional", backend=backend),
                "agzo": lambda: pgap.AGZO(model, lr=1e-3, eps=1e-2, seed=1, rank=2, refresh=2,
                                          mode="functional", backend=backend),
                "pgap": lambda: pgap.PGAP(model, lr=1e-3, eps=1e-2, seed=1, rank=2, window=2, probes=2,
                                          subspace="activation", mode="functional",
                                          backend=backend)}[method]
        opt = make()
        if method == "mezo" and dtype == torch.float32:
            opt.pair_copies = "draw"
        pair = (lambda: per_example(torch.cat([ids, ids])).view(2, -1).mean(dim=1)) if pairs else None
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        losses = [opt.step(lambda: per_example(ids).mean(), pair_closure=pair) for _ in range(3)]
        opt.close()
        moved = any(not torch.equal(v, before[k]) for k, v in model.named_parameters())
        results.append((losses, {k: v.detach().float().cpu() for k, v in model.named_parameters()}, moved))
    (l0, w0, _), (l1, w1, _), (l2, _, moved) = results
    assert l1 == pytest.approx(l0, rel=1e-5)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=0, atol=1e-5)
    assert all(torch.isfinite(torch.tensor(l2))) and moved
