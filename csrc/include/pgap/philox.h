// Philox4x32-10 (Random123) and the counter layout of the philox4x32-10/v1 stream.
//
// xi(seed, key, i): block b = i / 4, lane = i % 4,
// counter = (b mod 2^32, b >> 32, key, 0), Philox key = (seed mod 2^32, seed >> 32).
// See docs/rng.md. Branch-free so that host loops vectorize.
#pragma once
#include <cstdint>

#include "pgap/macros.h"

namespace pgap {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Words4 {
  uint32_t w0, w1, w2, w3;
};

PGAP_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Word `lane` (0..3) of a block.
PGAP_HD uint32_t word_of_lane(const Words4& w, uint32_t lane) {
  return lane == 0 ? w.w0 : lane == 1 ? w.w1 : lane == 2 ? w.w2 : w.w3;
}

// Ten Philox rounds on counter (c0..c3) with key (k0, k1); the key is bumped between rounds.
PGAP_HD Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c0, hi0, lo0);
    mulhilo32(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Words4{c0, c1, c2, c3};
}

// The four words of block b for (seed, key) with counter word c3 = domain.
PGAP_HD Words4 block_words(uint64_t seed, uint32_t key, uint32_t domain, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), key,
                       domain, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The four words of stream block b for (seed, key): the Gaussian stream's domain c3 = 0.
PGAP_HD Words4 stream_block_words(uint64_t seed, uint32_t key, uint64_t block) {
  return block_words(seed, key, 0u, block);
}

}  // namespace pgap
