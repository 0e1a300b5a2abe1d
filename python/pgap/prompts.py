"""Prompt-based classification with a causal LM (MeZO's protocol): the prompt is the template
with the text filled in, and the class scores are the next-token logits of the label words."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .data import Example


class PromptClassifier:
    """Encodes examples and scores them with a causal LM.

    ``label_words[i]`` must be a single token of ``tokenizer`` (without special tokens); the
    logits of those tokens at the last prompt position are the class scores and the loss is
    their cross-entropy with the label.
    """

    def __init__(self, tokenizer, template: str, label_words: Sequence[str], max_length: int = 128) -> None:
        if "{text}" not in template:
            raise ValueError(f"template must contain '{{text}}', got {template!r}")
        self.tokenizer, self.template, self.max_length = tokenizer, template, int(max_length)
        ids = []
        for word in label_words:
            toks = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(toks) != 1:
                pieces = tokenizer.convert_ids_to_tokens(toks)
                raise ValueError(f"label word {word!r} is {len(toks)} tokens {pieces} for this "
                                 "tokenizer; pick words that are a single token (often with a "
                                 "leading space, e.g. ' great')")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"label words {list(label_words)} map to the same token")
        self.label_ids = torch.tensor(ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)

    def encode(self, examples: Sequence[Example]) -> Dict[str, torch.Tensor]:
        """input_ids / attention_mask (batch, longest prompt; right padding, prompts truncated
        from the left to ``max_length``) and labels (batch,)."""
        seqs: List[List[int]] = []
        for ex in examples:
            ids = self.tokenizer(self.template.format(text=ex.text), add_special_tokens=False)["input_ids"]
            seqs.append(ids[-self.max_length:])
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "labels": torch.tensor([ex.label for ex in examples])}

    def scores(self, model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Label-word logits at each prompt's last token: (batch, num_labels), float32."""
        device = next(model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        last = mask.sum(dim=1) - 1
        rows = logits[torch.arange(ids.shape[0], device=device), last]
        return rows[:, self.label_ids.to(device)].float()

    def loss(self, model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.scores(model, batch)
        return F.cross_entropy(scores, batch["labels"].to(scores.device))

    def accuracy(self, model, examples: Sequence[Example], batch_size: int = 32) -> float:
        """Fraction of ``examples`` whose highest-scoring label word is the label."""
        return self.correct(model, examples, batch_size) / len(examples) if examples else float("nan")

    @torch.no_grad()
    def correct(self, model, examples: Sequence[Example], batch_size: int = 32,
                count: Optional[int] = None) -> int:
        """How many of the first ``count`` (default all) of ``examples`` have their label as the
        highest-scoring label word (the rest are scored but not counted: padding that keeps
        FSDP ranks at the same number of forwards)."""
        was = model.training
        model.eval()
        correct = 0
        for i in range(0, len(examples), batch_size):
            batch = self.encode(examples[i:i + batch_size])
            pred = self.scores(model, batch).argmax(dim=1).cpu()
            hits = pred == batch["labels"]
            if count is not None:
                hits = hits[:max(0, count - i)]
            correct += int(hits.sum())
        model.train(was)
        return correct
