"""Toy problems for the optimizer tests, built in the tests (no downloads)."""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import nn


def teacher_problem(seed: int = 0, n: int = 256, d_in: int = 24, d_out: int = 12, rank: int = 2,
                    dtype: torch.dtype = torch.float32
                    ) -> Tuple[nn.Module, Callable[[], torch.Tensor]]:
    """Least squares with a low-rank teacher: a Linear student (random init) fits Y = X·T^T."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g)
    T = torch.randn(d_out, rank, generator=g) @ torch.randn(rank, d_in, generator=g) / rank
    Y = X @ T.T
    student = nn.Linear(d_in, d_out)
    with torch.no_grad():
        student.weight.copy_(0.1 * torch.randn(d_out, d_in, generator=g))
        student.bias.zero_()
    student.to(dtype)
    X = X.to(dtype)
    return student, lambda: ((student(X).float() - Y) ** 2).mean()


def mlp_problem(seed: int = 0, dtype: torch.dtype = torch.float32
                ) -> Tuple[nn.Module, Callable[[], torch.Tensor]]:
    """A tiny MLP with an embedding, a LayerNorm and two Linears regressing a fixed target."""
    g = torch.Generator().manual_seed(seed)

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(17, 8)
            self.fc1 = nn.Linear(8, 32)
            self.norm = nn.LayerNorm(32)
            self.fc2 = nn.Linear(32, 5)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.tanh(self.norm(self.fc1(self.embed(idx)))))

    torch.manual_seed(seed)
    model = MLP().to(dtype)
    idx = torch.randint(0, 17, (64,), generator=g)
    target = torch.randn(64, 5, generator=g).to(dtype)
    return model, lambda: ((model(idx) - target).float() ** 2).mean()


def tiny_llama(seed: int = 0, tie: bool = True) -> Tuple[nn.Module, Callable[[], torch.Tensor]]:
    """A 2-layer random-init Llama from a config (tied embeddings) on a fixed random batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(seed + 1))
    return model, lambda: model(input_ids=ids, labels=ids).loss


def weights(model: nn.Module) -> dict:
    """Detached copies of every parameter."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def loss_along(model: nn.Module, closure: Callable[[], torch.Tensor], w0: dict, z: dict,
               c: float) -> float:
    """The closure's loss with every parameter set to ``w0[name] + c * z[name]`` (mutates the
    model's parameters)."""
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(w0[k] + c * z[k])
        return closure().item()


def quadratic_problem(seed: int = 0, d: int = 1000) -> Tuple[nn.Module, Callable[[], torch.Tensor]]:
    """f(x) = ½ Σ λ_j x_j², λ linearly spaced in [0.1, 1], x0 ~ N(0, I) (gradient λ·x known)."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.linspace(0.1, 1.0, d)

    class Quadratic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.randn(d, generator=g))

        def forward(self) -> torch.Tensor:
            return 0.5 * (lam * self.x.float() ** 2).sum()

    model = Quadratic()
    return model, model


def loss_of(closure: Callable[[], torch.Tensor]) -> float:
    """The closure's loss under no_grad, as a float (not counted by any optimizer)."""
    with torch.no_grad():
        return float(closure())


class Recorder:
    """Wraps a closure and records every loss it returns."""

    def __init__(self, closure: Callable[[], torch.Tensor]) -> None:
        self.closure, self.losses = closure, []

    def __call__(self) -> torch.Tensor:
        loss = self.closure()
        self.losses.append(float(loss))
        return loss


def poisoned(closure: Callable[[], torch.Tensor], call: int, value: float) -> Callable[[], torch.Tensor]:
    """The closure, except that its ``call``-th call (1-based) returns ``value`` times the loss."""
    calls = []

    def wrapped() -> torch.Tensor:
        calls.append(1)
        return closure() * (value if len(calls) == call else 1.0)

    return wrapped


def resumed_run(make: Callable[[nn.Module], object], problem: Callable[[], Tuple[nn.Module, Callable]],
                path, before: int, after: int) -> dict:
    """Run ``before`` steps, save the optimizer (pgap.save_optimizer) and the model under ``path``,
    run ``after`` more; then rebuild both from the files and run ``after`` steps there. Pending
    functional updates are merged at the end of both runs (a no-op in place).

    Returns the live run's losses after the save ("live"), the resumed run's ("resumed"), the
    resumed optimizer's forward count right after loading ("loaded_forwards") and both models'
    weights ("live_weights", "resumed_weights")."""
    import pgap

    model, closure = problem()
    opt = make(model)
    for _ in range(before):
        opt.step(closure)
    pgap.save_optimizer(opt, path / "opt.safetensors")  # functional modes merge here
    torch.save(model.state_dict(), path / "model.pt")
    live = [opt.step(closure) for _ in range(after)]
    opt.merge()
    model2, closure2 = problem()
    model2.load_state_dict(torch.load(path / "model.pt"))
    opt2 = make(model2)
    pgap.load_optimizer(opt2, path / "opt.safetensors")
    loaded_forwards = opt2.forwards
    resumed = [opt2.step(closure2) for _ in range(after)]
    opt2.merge()
    return {"live": live, "resumed": resumed, "loaded_forwards": loaded_forwards,
            "live_weights": weights(model), "resumed_weights": weights(model2)}
