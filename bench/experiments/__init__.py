"""Experiments: what the optimizers learn on the real task (the embedded SmolLM2 on Rotten
Tomatoes) at equal forward budgets (``python -m bench.experiments.<name>``)."""
