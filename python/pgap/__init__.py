"""pgap: zeroth-order optimizers (MeZO, P-GAP, ...) built on the public pgap_kernels API."""

__version__ = "0.1.0"
