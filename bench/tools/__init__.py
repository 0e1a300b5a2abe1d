"""Tools: ``python -m bench.tools.gpu_check`` (``make gpu-check``, docs/gpu.md)."""
