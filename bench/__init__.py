"""The benchmarks, a package run from the repository root: ``python -m bench.<group>.<name>``
(bench/README.md). kernels/: one op at a time; steps/: a whole optimizer step; experiments/: what
the methods learn on the real task; tools/: the GPU check; common.py: the one helper module."""
