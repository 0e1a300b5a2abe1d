"""Prompt-based classification with a causal LM (MeZO's protocol): the prompt is the template
with the text filled in, and the class scores are the next-token logits of the label words."""
from __future__ import annotations

import inspect
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..dtypes import compute_context
from .data import Example

_KEEPS_LOGITS: Dict[type, bool] = {}


def keeps_logits(model) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (transformers' causal LMs since 4.49):
    then the output layer runs on the kept positions only. A PEFT wrapper is judged by its base
    model. Cached per class."""
    cls = type(model)
    if cls not in _KEEPS_LOGITS:
        params = inspect.signature(model.forward).parameters
        found = "logits_to_keep" in params
        base = getattr(model, "get_base_model", None)
        if not found and callable(base) and any(p.kind is p.VAR_KEYWORD for p in params.values()):
            found = "logits_to_keep" in inspect.signature(base().forward).parameters
        _KEEPS_LOGITS[cls] = found
        if not found:
            warnings.warn(f"{cls.__name__}.forward takes no logits_to_keep: the prompt scores use "
                          "the logits of every position (slower; results are the same)",
                          RuntimeWarning, stacklevel=3)
    return _KEEPS_LOGITS[cls]


class PromptClassifier:
    """Encodes examples and scores them with a causal LM.

    ``label_words[i]`` must be a single token of ``tokenizer`` (without special tokens); the
    logits of those tokens at the last prompt position are the class scores and the loss is
    their cross-entropy with the label.
    """

    def __init__(self, tokenizer, template: str, label_words: Sequence[str], max_length: int = 128,
                 compute_dtype: Optional[torch.dtype] = None) -> None:
        if "{text}" not in template:
            raise ValueError(f"template must contain '{{text}}', got {template!r}")
        self.tokenizer, self.template, self.max_length = tokenizer, template, int(max_length)
        self.compute_dtype = compute_dtype  # forwards under autocast to it (float32 weights, bf16 math)
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

    def prompt_ids(self, example: Example) -> List[int]:
        """The token ids of ``example``'s prompt, truncated from the left to ``max_length``."""
        ids = self.tokenizer(self.template.format(text=example.text), add_special_tokens=False)["input_ids"]
        return ids[-self.max_length:]

    def encode(self, examples: Sequence[Example]) -> Dict[str, torch.Tensor]:
        """input_ids / attention_mask (batch, longest prompt; right padding, prompts truncated
        from the left to ``max_length``) and labels (batch,)."""
        return self.pack([self.prompt_ids(ex) for ex in examples], [ex.label for ex in examples])

    def pack(self, seqs: Sequence[List[int]], labels: Sequence[int]) -> Dict[str, torch.Tensor]:
        """:meth:`encode` of prompts already turned into token ids."""
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor(list(labels))}

    def scores(self, model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Label-word logits at each prompt's last token: (batch, num_labels), float32.

        The output layer (the model's own ``lm_head``, so hooks, views, LoRA and FSDP2 see the
        call they always see) runs only at the distinct last-prompt positions of the batch, not at
        every position, where the model takes ``logits_to_keep``; other models get the full
        logits (:func:`keeps_logits` warns once).
        """
        device = next(model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        last = batch["attention_mask"].sum(dim=1) - 1  # on the CPU: no device sync for unique
        rows_at = torch.arange(ids.shape[0], device=device)
        with compute_context(self.compute_dtype, device):
            rows = self._last_rows(model, ids, mask, last, rows_at)
        return rows[:, self.label_ids.to(device)].float()

    @staticmethod
    def _last_rows(model, ids, mask, last, rows_at) -> torch.Tensor:
        """The logits at each row's last prompt position: (batch, vocab)."""
        device = ids.device
        if keeps_logits(model):
            positions, column = torch.unique(last, return_inverse=True)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                           logits_to_keep=positions.to(device)).logits  # (batch, positions, vocab)
            rows = logits[rows_at, column.to(device)]
        else:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            rows = logits[rows_at, last.to(device)]
        return rows

    def loss(self, model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.scores(model, batch)
        return F.cross_entropy(scores, batch["labels"].to(scores.device))

    def pair_loss(self, model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`loss` of ``batch`` twice, in one forward over the batch stacked twice along
        dim 0: a tensor of 2 (the first copy's loss, the second's), what a ZO optimizer's
        ``step(closure, pair_closure=...)`` takes (:mod:`pgap.paired`)."""
        doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
        per_example = F.cross_entropy(self.scores(model, doubled),
                                      doubled["labels"].to(next(model.parameters()).device),
                                      reduction="none")
        return per_example.view(2, -1).mean(dim=1)

    def accuracy(self, model, examples: Sequence[Example], batch_size: int = 32) -> float:
        """Fraction of ``examples`` whose highest-scoring label word is the label."""
        return self.correct(model, examples, batch_size) / len(examples) if examples else float("nan")

    def correct(self, model, examples: Sequence[Example], batch_size: int = 32,
                count: Optional[int] = None) -> int:
        """How many of the first ``count`` (default all) of ``examples`` have their label as the
        highest-scoring label word (the rest are scored but not counted: padding that keeps
        FSDP ranks at the same number of forwards); :meth:`evaluate`'s first value."""
        return self.evaluate(model, examples, batch_size, count)[0]

    @torch.no_grad()
    def evaluate(self, model, examples: Sequence[Example], batch_size: int = 32,
                 count: Optional[int] = None) -> Tuple[int, float]:
        """(correct, summed cross-entropy) over the first ``count`` (default all) of
        ``examples``: how many have their label as the highest-scoring label word, and the sum
        of :meth:`loss`'s per-example cross-entropy (the rest are scored but not counted).

        Batches are formed by prompt length (less padding); each example's prediction does not
        depend on the batch it lands in beyond float rounding.
        """
        was = model.training
        model.eval()
        seqs = [self.prompt_ids(ex) for ex in examples]
        counted = len(examples) if count is None else max(0, min(count, len(examples)))
        order = sorted(range(len(examples)), key=lambda j: len(seqs[j]))
        correct, loss = 0, 0.0
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            batch = self.pack([seqs[j] for j in chunk], [examples[j].label for j in chunk])
            scores = self.scores(model, batch).cpu()
            hits = scores.argmax(dim=1) == batch["labels"]
            losses = F.cross_entropy(scores, batch["labels"], reduction="none")
            for j, h, x in zip(chunk, hits.tolist(), losses.tolist()):
                if j < counted:
                    correct += int(h)
                    loss += x
        model.train(was)
        return correct, loss
