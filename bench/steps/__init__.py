"""Step benchmarks: the time, forwards and bytes of a whole optimizer step on causal LMs
(``python -m bench.steps.<name>``)."""
