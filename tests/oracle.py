"""Independent float64 NumPy oracle of the philox4x32-10/v1 stream and of the Rademacher stream
philox4x32-10-rademacher/v1 (written from docs/rng.md).

Uses none of the package's code: uint64 NumPy arithmetic for Philox and float64 math for the
Box-Muller step, so it gives the "exact" values the backends are held to.
"""
import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = np.uint64(0xFFFFFFFF)


def philox(c0, c1, c2, c3, k0, k1):
    c = [np.asarray(x, dtype=np.uint64) for x in (c0, c1, c2, c3)]
    k0, k1 = int(k0), int(k1)
    for _ in range(10):
        p0 = M0 * c[0]
        p1 = M1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & MASK,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & MASK]
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c


def xi_exact(seed: int, key: int, indices) -> np.ndarray:
    """float64 xi(seed, key, i) for an array of element indices."""
    i = np.asarray(indices, dtype=np.uint64)
    b = i >> np.uint64(2)
    lane = (i & np.uint64(3)).astype(np.int64)
    w = philox(b & MASK, b >> np.uint64(32), np.full_like(b, key), np.zeros_like(b),
               seed & 0xFFFFFFFF, seed >> 32)
    u = [((x >> np.uint64(9)) * np.uint64(2) + np.uint64(1)).astype(np.float64) * 2.0 ** -24 for x in w]
    r01, r23 = np.sqrt(-2 * np.log(u[0])), np.sqrt(-2 * np.log(u[2]))
    z = np.stack([r01 * np.cos(2 * np.pi * u[1]), r01 * np.sin(2 * np.pi * u[1]),
                  r23 * np.cos(2 * np.pi * u[3]), r23 * np.sin(2 * np.pi * u[3])])
    return z[lane, np.arange(len(i))]


def rho_exact(seed: int, key: int, indices) -> np.ndarray:
    """float64 rho(seed, key, i) (+1.0 or -1.0) for an array of element indices: bit i % 32 of
    word (i // 32) % 4 of the block i // 128 with counter word c3 = 2."""
    i = np.asarray(indices, dtype=np.uint64)
    b = i >> np.uint64(7)
    w = np.stack(philox(b & MASK, b >> np.uint64(32), np.full_like(b, key), np.full_like(b, 2),
                        seed & 0xFFFFFFFF, seed >> 32))
    x = w[((i >> np.uint64(5)) & np.uint64(3)).astype(np.int64), np.arange(len(i))]
    return 1.0 - 2.0 * ((x >> (i & np.uint64(31))) & np.uint64(1)).astype(np.float64)
