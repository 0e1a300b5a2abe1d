"""The fine-tuning application: the ``pgap-finetune`` command (``python -m pgap.finetune``) and
what it is made of, on top of the optimizers (app -> pgap's optimizers -> pgap_kernels).

cli        the command: flags, per-method defaults (``DEFAULTS``), the run
train      the training loop: batches, ranks under torchrun, one step, evaluation
outputs    what a run writes: metrics.jsonl, plots, checkpoint/, model/
data       tasks: the embedded Rotten Tomatoes, .csv/.jsonl files, splits
models     the embedded SmolLM2 or a local transformers folder
prompts    the prompt classifier (MeZO's protocol: label words after a template)
lora       PEFT LoRA adapters (``--lora``)
sharding   FSDP2 sharding of a model (``--fsdp``)
memory     peak memory of the training steps

See docs/finetune.md.
"""
from .cli import main

__all__ = ["main"]
