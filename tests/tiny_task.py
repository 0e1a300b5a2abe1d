"""A tiny text-classification task for the app's and the benchmarks' tests: a 2-layer Llama and a
word-level tokenizer trained on the fly, and a CSV of reviews whose last word decides the label."""
import csv
import random

import pytest
import torch

POS = ["great", "fun", "moving", "brilliant", "charming"]
NEG = ["terrible", "dull", "boring", "awful", "flat"]
FILL = ["the", "movie", "film", "plot", "was", "a", "story", "really", "It", "and", "cast"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A transformers folder: 2-layer Llama + word-level tokenizer (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    words = POS + NEG + FILL
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)] * 3, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[PAD]")
    cfg = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    fast.save_pretrained(root / "model")
    rng = random.Random(0)
    with (root / "task.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "verdict"])
        for i in range(80):
            label = i % 2
            text = " ".join(rng.choice(FILL) for _ in range(4)) + " " + rng.choice(POS if label else NEG)
            w.writerow([text, "pos" if label else "neg"])
    return root
