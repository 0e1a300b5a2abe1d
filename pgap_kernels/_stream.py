"""Constants of the philox4x32-10/v1 random-stream contract, of its Rademacher stream
philox4x32-10-rademacher/v1 and of the stochastic-rounding words splitmix64-u16/v2 (see
docs/rng.md)."""
import ctypes
from typing import Optional

STREAM_VERSION = "philox4x32-10/v1"  # the Gaussian stream xi
RADEMACHER_VERSION = "philox4x32-10-rademacher/v1"  # the Rademacher stream rho
# The stochastic-rounding words and rule (rounding="stochastic"). Not in STREAM_VERSIONS, whose
# keys are the values of the ops' ``distribution`` argument; v1 (Philox words, counter word c3 = 1)
# was replaced by v2.
ROUNDING_VERSION = "splitmix64-u16/v2"
# The ``distribution`` argument of the perturbation ops -> the contract of the stream it draws.
STREAM_VERSIONS = {"gaussian": STREAM_VERSION, "rademacher": RADEMACHER_VERSION}
DISTRIBUTIONS = tuple(STREAM_VERSIONS)
DISTRIBUTION_CODES = {"gaussian": 0, "rademacher": 1}  # csrc Distribution

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

SEED_LIMIT = 1 << 64   # seeds in [0, 2^64)
KEY_LIMIT = 1 << 32    # keys in [0, 2^32)
INDEX_LIMIT = 1 << 63  # offset + numel must stay below 2^63 (int64 in every backend)

UNIFORM_SCALE = 2.0 ** -24  # u = (2*(x >> 9) + 1) * 2^-24
RADEMACHER_DOMAIN = 2  # Philox counter word c3 of the Rademacher stream's words
RADEMACHER_BLOCK = 128  # elements per Philox block of the Rademacher stream (4 words x 32 bits)
TWO_PI = 6.283185307179586

# splitmix64-u16/v2: base = mix64(R ^ (key * ROUNDING_KEY_MUL)), x = mix64(base + (e // 4 + 1) *
# ROUNDING_GAMMA), word of element e = (x >> (16 * (e % 4))) & 0xFFFF; all mod 2^64, with
# mix64(z): z = (z ^ z >> 30) * MIX64_M1; z = (z ^ z >> 27) * MIX64_M2; z ^ z >> 31.
ROUNDING_KEY_MUL = 0xD1B54A32D192ED03
ROUNDING_GAMMA = 0x9E3779B97F4A7C15
MIX64_M1 = 0xBF58476D1CE4E5B9
MIX64_M2 = 0x94D049BB133111EB


def seed_to_int64(seed: int) -> int:
    """Reinterpret a seed in [0, 2^64) as a signed int64 (the torch.library schema type)."""
    return seed - SEED_LIMIT if seed >= (1 << 63) else seed


def seed_from_int64(seed: int) -> int:
    """Inverse of :func:`seed_to_int64`."""
    return seed + SEED_LIMIT if seed < 0 else seed


def optional_seed_to_int64(seed: Optional[int]) -> Optional[int]:
    """:func:`seed_to_int64` of a seed that may be None (None stays None)."""
    return None if seed is None else seed_to_int64(seed)


def as_float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (inf beyond its range): the value a float32 kernel
    argument holds. Decide on this value, not on ``x``: a decay that is 0 here (|decay| <= 2**-150,
    e.g. 1e-50) means overwrite, W not read, in every backend (the C++ ones receive a float)."""
    return ctypes.c_float(x).value


def optional_seed_from_int64(seed: Optional[int]) -> Optional[int]:
    """Inverse of :func:`optional_seed_to_int64`."""
    return None if seed is None else seed_from_int64(seed)
