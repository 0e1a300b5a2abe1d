"""Kernel benchmarks: one pgap_kernels op at a time against the eager PyTorch path
(``python -m bench.kernels.<name>``)."""
