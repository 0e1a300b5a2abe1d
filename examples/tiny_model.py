"""A tiny Llama built from a config (random init, nothing downloaded) and one fixed batch of
token ids, shared by the examples. The task is to memorise the batch: its language-model loss
starts near ln(64) ≈ 4.16 and falls as the model learns it."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn


def tiny_llama(seed: int = 0) -> nn.Module:
    """A 2-layer ``LlamaForCausalLM`` with 64 tokens and hidden size 32 (about 20 k parameters,
    tied embeddings), initialised from ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def fixed_batch(rows: int = 8, length: int = 16, seed: int = 1) -> Dict[str, torch.Tensor]:
    """``{"input_ids", "labels"}``: ``rows`` random sequences of ``length`` tokens (labels = ids)."""
    ids = torch.randint(0, 64, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def batch_loss(model: nn.Module, batch: Dict[str, torch.Tensor]) -> float:
    """The model's loss on ``batch``, without gradients."""
    with torch.no_grad():
        return model(**batch).loss.item()
