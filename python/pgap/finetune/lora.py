"""LoRA adapters through PEFT for ZO fine-tuning: only the adapter matrices A (r×in) and B (out×r)
have ``requires_grad=True``, so a pgap optimizer built on the wrapped model perturbs and updates
only them (the base weights are frozen and never written)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .._deps import require

DEFAULT_TARGETS = ("q_proj", "v_proj")  # MeZO's LoRA setting


def _peft():
    """The peft module; MissingDependencyError (an ImportError) naming ``pip install
    "pgap-kernels[hf]"`` when it is not installed."""
    require("for LoRA (pgap.finetune.lora)", ("peft",), "hf")
    import peft  # noqa: PLC0415

    return peft


def apply_lora(model: nn.Module, *, r: int = 8, alpha: float = 16.0,
               targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0) -> nn.Module:
    """Wrap ``model`` (a causal LM) in a PEFT LoRA model with fresh adapters of rank ``r`` on the
    modules named ``targets``; returns the wrapped model (the base weights are frozen in place).
    Dropout is 0: a ZO step compares two losses of the same function. The adapters' initial A is
    drawn from ``seed`` (the global torch RNG is left as it was); B starts at zero.

    Raises ValueError if ``r`` < 1 or no module of ``model`` matches ``targets``, and
    :class:`pgap._deps.MissingDependencyError` (an ImportError) if peft is not installed."""
    if r < 1:
        raise ValueError(f"lora r must be >= 1, got {r}")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"--lora-targets {missing} match no module of the model "
                         f"(linear layers include e.g. {sorted(n for n in names if 'proj' in n)[:8]})")
    peft = _peft()
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                             bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def load_lora(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """Wrap ``model`` with the trainable adapters saved by ``save_pretrained`` in ``adapter_dir``."""
    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise FileNotFoundError(f"no LoRA adapter (adapter_config.json) in {adapter_dir}")
    return _peft().PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
