"""Stream keys and seeds of the ZO optimizers (documented in docs/optimizers.md).

Keys: the 32-bit FNV-1a hash of a parameter's qualified name (``pgap_kernels.fnv1a32``,
``pgap_kernels.name_keys``), so a parameter's perturbation does
not depend on the parameter order or on which other parameters are trainable.

Seeds: ``derive_seed(seed, step, stream) = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ stream)``
(all arithmetic mod 2**64). ``stream`` separates the draws of one step: ``STEP_STREAM`` (0) for the
step's direction, ``PROBE_STREAM + j`` for P-GAP's probe j, and the named constants below for the
other draws of a window. Equal (seed, step, stream) give equal seeds on every machine.
"""
from __future__ import annotations

from typing import Dict, Iterator

from pgap_kernels import fnv1a32, name_keys  # noqa: F401  (the key contract, re-exported)

MASK64 = (1 << 64) - 1

STEP_STREAM = 0
PROBE_STREAM = 1              # probe j (0-based) uses PROBE_STREAM + j
RSVD_STREAM = 1 << 32         # the randomized SVD's test matrix
BASIS_STREAM = (1 << 32) + 1  # random orthonormal bases (subspace="random")
ROUNDING_STREAM = (1 << 32) + 16  # stochastic rounding of update pass i uses ROUNDING_STREAM + i

def splitmix64(x: int) -> int:
    """One splitmix64 output for state ``x`` (Steele, Lea & Flood 2014), in [0, 2**64)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, step: int, stream: int = STEP_STREAM) -> int:
    """The 64-bit stream seed of draw ``stream`` at optimizer step ``step`` for user ``seed``."""
    return splitmix64(splitmix64(splitmix64(seed & MASK64) ^ (step & MASK64)) ^ (stream & MASK64))


def random_sign(seed: int, key: int = 0) -> float:
    """+1.0 or -1.0 from the low bit of ``splitmix64(seed ^ (key << 32))`` (P-GAP's xi)."""
    return 1.0 if splitmix64((seed ^ (key << 32)) & MASK64) & 1 else -1.0


class RoundingPasses:
    """The named update passes of an optimizer's step and the stream index of each: pass
    ``name`` at step ``step`` rounds into bf16/fp16 weights with the seed
    ``derive_seed(seed, step, ROUNDING_STREAM + index)``. Two names at one index raise
    ValueError when the registry is defined, so no pass can reuse another pass's bits; an
    undefined name raises KeyError when used."""

    def __init__(self, **indices: int) -> None:
        owner: Dict[int, str] = {}
        for name, index in indices.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"rounding pass {name!r}: index must be an int >= 0, got {index!r}")
            if index in owner:
                raise ValueError(f"rounding passes {owner[index]!r} and {name!r} share index {index}")
            owner[index] = name
        self._indices = dict(indices)

    def index(self, name: str) -> int:
        """The stream index of pass ``name`` (KeyError naming the defined passes otherwise)."""
        if name not in self._indices:
            raise KeyError(f"no rounding pass {name!r}; defined: {sorted(self._indices)}")
        return self._indices[name]

    def seed(self, seed: int, step: int, name: str) -> int:
        """The stochastic-rounding seed of pass ``name`` at ``step`` for user ``seed``."""
        return derive_seed(seed, step, ROUNDING_STREAM + self.index(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._indices)


def group_pass(name: str, group: int) -> str:
    """The pass of weight-decay group ``group`` (0: every parameter, or the decayed ones when
    weight decay splits them; 1: the undecayed ones): ``name`` or ``name + "_undecayed"``."""
    return name if group == 0 else f"{name}_undecayed"


# Today's indices, kept exactly (the golden trajectories depend on them).
SEEDED_PASSES = RoundingPasses(update=0, update_undecayed=1)  # one perturb_ per decay group
LOWRANK_PASSES = RoundingPasses(matrices=0, vectors=1, matrices_undecayed=2, vectors_undecayed=3,
                                merge=15)  # P-GAP/AGZO: matrices and vectors per group; side-path merge
