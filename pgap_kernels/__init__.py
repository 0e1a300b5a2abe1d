"""pgap_kernels: fused kernels for zeroth-order (ZO) fine-tuning.

Public API
----------
gaussian(shape, seed, *, key=0, offset=0, device=None, dtype=torch.float32) -> Tensor
rademacher(shape, seed, *, key=0, offset=0, device=None, dtype=torch.float32) -> Tensor   (+-1)
perturb_(tensors, seeds, coeffs, *, keys=None, offsets=None, decay=1.0, mean=None, mean_coeff=0.0,
         rounding="nearest", rounding_seed=None, distribution="gaussian")
perturbed(tensor, seeds, coeffs, *, key=0, offset=0, mean=None, mean_coeff=0.0, out=None,
          distribution="gaussian") -> Tensor
                               out-of-place perturb_ (decay 1): tensor is read, never written
perturbed_many(tensors, seeds, coeffs, *, keys=None, offsets=None, mean=None, mean_coeff=0.0,
               out=None, distribution="gaussian") -> List[Tensor]
                               perturbed over many tensors in one call
                               distribution="rademacher": +-1 directions (SPSA) instead of
                               Gaussian ones, memory-bound (docs/rng.md, "The Rademacher stream")
PerturbedManyPlan(tensors, *, keys=None, offsets=None, mean=None, out=None, distribution="gaussian")
    plan(seeds, coeffs, *, mean_coeff=0.0) -> List[Tensor]
                               perturbed_many on fixed tensors checked once: each call checks only
                               its seeds/coeffs and that no tensor moved (StalePlanError if one did)
lowrank_perturb_(W, U, Z, V, scale, *, decay=1.0, rounding="nearest", rounding_seed=None,
                 keys=None, offsets=None)                           W <- decay*W + scale*U@Z@V.T
subspace_perturb_(tensors, bases, seeds, coeffs, *, keys=None, offsets=None, decay=1.0,
                  rounding="nearest", rounding_seed=None)
                               W_p <- decay*W_p + sum_j c_j Xi(s_j, key_p) @ V_p.T (docs/subspace.md)
                               rounding="stochastic": unbiased, reproducible rounding of 16-bit
                               results (docs/rng.md, "Stochastic rounding")
gaussian_sketch(m, n, seeds, coeffs, omega, *, key, offset, transpose)   implicit A@omega
gaussian_sketch_batch(problems, seeds, coeffs, omegas, *, transpose)     many sketches
GaussianSum(m, n, seeds, coeffs, *, key, offset, device)            implicit sum_j c_j Xi_j
randomized_svd(A, rank, *, oversample=10, n_iter=2, seed=0)        -> (U, S, V)
randomized_svd_operator(matmul, rmatmul, m, n, rank, *, batch, ...)  same, from products only
aligned_perturbation(Z0, S, xi, delta)                             P-GAP's aligned projection
fnv1a32(name), name_keys(names)   stream keys from tensor names: pass keys=name_keys(names)
                               whenever one model's tensors are split over several calls
use_backend(name)              context manager forcing a backend
available_backends(device)     backends that can run on a device
STREAM_VERSION                 the random-stream contract, "philox4x32-10/v1" (docs/rng.md)
RADEMACHER_VERSION             the Rademacher stream's, "philox4x32-10-rademacher/v1"
STREAM_VERSIONS                {"gaussian": STREAM_VERSION, "rademacher": RADEMACHER_VERSION}:
                               the contract of each ``distribution`` value
ROUNDING_VERSION               the stochastic-rounding words' and rule's, "splitmix64-u16/v2"

All in-place ops, ``perturbed`` and the sketches are ``torch.library`` custom ops (namespace
``pgap``), so torch.compile traces them without graph breaks.

Importing needs neither a GPU, nor the compiled ``_C`` module, nor triton: a missing backend
fails when it is used, with the reason.
"""
from ._dispatch import available_backends, backend_status, use_backend
from ._stream import RADEMACHER_VERSION, ROUNDING_VERSION, STREAM_VERSION, STREAM_VERSIONS
from .alignment import aligned_perturbation
from .args import SketchProblem
from .gaussian_sum import GaussianSum
from .keys import fnv1a32, name_keys
from .lowrank import lowrank_perturb_
from .perturb import gaussian, perturb_, perturbed, perturbed_many, rademacher
from .plan import PerturbedManyPlan, StalePlanError
from .rsvd import randomized_svd, randomized_svd_operator
from .sketch import gaussian_sketch, gaussian_sketch_batch
from .subspace import subspace_perturb_

__version__ = "0.1.0"

__all__ = ["GaussianSum", "PerturbedManyPlan", "RADEMACHER_VERSION", "ROUNDING_VERSION",
           "STREAM_VERSION", "STREAM_VERSIONS", "SketchProblem", "StalePlanError",
           "aligned_perturbation", "available_backends", "backend_status", "gaussian",
           "gaussian_sketch", "gaussian_sketch_batch", "fnv1a32", "lowrank_perturb_", "name_keys",
           "perturb_", "perturbed", "perturbed_many", "rademacher", "randomized_svd",
           "randomized_svd_operator", "subspace_perturb_", "use_backend", "__version__"]
