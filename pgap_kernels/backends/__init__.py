"""Backends of pgap_kernels: one sub-package per backend, the same op file names in each.

Each sub-package exposes ``unavailable_reason(device) -> Optional[str]`` (cheap, imports no
kernels) and one module per op (``perturb.py``) with the same function names.
"""
