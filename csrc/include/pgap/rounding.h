// Stochastic rounding of float32 results into bfloat16/float16, shared by the host and CUDA
// builds: the rounding words splitmix64-u16/v2 and the rule (docs/rng.md, "Stochastic rounding").
//
// The rounding word of logical element e under (rounding_seed R, key k) is a 16-bit slice of a
// counter-based SplitMix64 hash (no Philox):
//   base = mix64(R ^ (k * kRoundingKeyMul))                      (mod 2^64; once per (R, k))
//   x    = mix64(base + (e / 4 + 1) * kRoundingGamma)            (one hash per 4 elements)
//   u16  = (x >> (16 * (e % 4))) & 0xFFFF
// with mix64 SplitMix64's finalizer. A float32 v becomes lo + ulp (away from zero) iff
// u16 < frac * 2^16, else lo, where lo = floor(|v| / ulp) * ulp, frac = |v| / ulp -
// floor(|v| / ulp) and ulp is the target's spacing at |v|; the sign is restored. NaN, +-inf and
// |v| >= the largest finite value are left to the usual round to nearest. The functions return
// a float32 value that the target dtype holds exactly (so the usual round-to-nearest store then
// writes it unchanged).
#pragma once
#include <cstdint>

#include "pgap/macros.h"
#include "pgap/normal.h"
#include "pgap/philox.h"  // Words4 only: the rounding words draw no Philox

namespace pgap {

constexpr uint64_t kRoundingKeyMul = 0xD1B54A32D192ED03ull;  // spreads the key over 64 bits
constexpr uint64_t kRoundingGamma = 0x9E3779B97F4A7C15ull;   // SplitMix64's increment
constexpr uint64_t kMix64M1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix64M2 = 0x94D049BB133111EBull;

// SplitMix64's finalizer (a bijection of 64-bit words).
PGAP_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * kMix64M1;
  z = (z ^ (z >> 27)) * kMix64M2;
  return z ^ (z >> 31);
}

// The hash state of one (rounding seed, key) pair; compute it once per tensor or tile.
PGAP_HD uint64_t rounding_base(uint64_t rounding_seed, uint32_t key) {
  return mix64(rounding_seed ^ (static_cast<uint64_t>(key) * kRoundingKeyMul));
}

// The 64 bits of block b: the rounding words of elements 4b .. 4b + 3, lane l in bits 16l..16l+15.
PGAP_HD uint64_t rounding_block_hash(uint64_t base, uint64_t block) {
  return mix64(base + (block + 1u) * kRoundingGamma);
}

// The rounding word (a value in [0, 2^16)) of lane `lane` of a block's hash.
PGAP_HD uint32_t rounding_lane_word(uint64_t hash, uint32_t lane) {
  return static_cast<uint32_t>(hash >> (16u * lane)) & 0xFFFFu;
}

// The four rounding words of elements 4*block .. 4*block + 3.
PGAP_HD Words4 rounding_block_words(uint64_t base, uint64_t block) {
  const uint64_t x = rounding_block_hash(base, block);
  return Words4{rounding_lane_word(x, 0), rounding_lane_word(x, 1), rounding_lane_word(x, 2),
                rounding_lane_word(x, 3)};
}

// The rounding word of element e under (rounding_seed, key), from scratch.
PGAP_HD uint32_t rounding_word(uint64_t rounding_seed, uint32_t key, uint64_t e) {
  return rounding_lane_word(rounding_block_hash(rounding_base(rounding_seed, key), e >> 2),
                            static_cast<uint32_t>(e & 3u));
}

// x[j] = the rounding word of element e0 + j, j = 0..3 (one or two hashes).
PGAP_HD void rounding_words4(uint64_t base, uint64_t e0, uint32_t (&x)[4]) {
  const uint32_t shift = static_cast<uint32_t>(e0 & 3u);
  const uint64_t a = rounding_block_hash(base, e0 >> 2);
  if (shift == 0) {
    for (uint32_t j = 0; j < 4; ++j) x[j] = rounding_lane_word(a, j);
    return;
  }
  const uint64_t b = rounding_block_hash(base, (e0 >> 2) + 1);
  for (uint32_t j = 0; j < 4; ++j)
    x[j] = shift + j < 4 ? rounding_lane_word(a, shift + j) : rounding_lane_word(b, shift + j - 4);
}

// bfloat16: on the float32 bits, the kept part is bits >> 16 and frac * 2^16 = bits & 0xffff
// (exact for float32 subnormals too); a carry into the exponent is the next binade.
PGAP_HD float round_stochastic_bf16(float v, uint32_t x) {
  const uint32_t bits = float_to_bits(v);
  const uint32_t mag = bits & 0x7FFFFFFFu;
  if (mag >= 0x7F7F0000u) return v;  // NaN, inf, or >= the largest finite bfloat16
  const uint32_t up = x < (mag & 0xFFFFu) ? 1u : 0u;
  return bits_to_float((bits & 0x80000000u) | (((mag >> 16) + up) << 16));
}

// The bfloat16 bit pattern of round_stochastic_bf16(v, x) stored with round to nearest even (NaN
// made quiet), in one add on the float32 bits: (bits + 0xFFFF - x) >> 16 carries into the kept
// half exactly when x < bits & 0xffff. For NaN, inf and |v| >= the largest finite bfloat16 the
// addend is round to nearest even's, 0x7FFF + the kept half's lowest bit.
PGAP_HD uint16_t round_stochastic_bf16_bits(float v, uint32_t x) {
  const uint32_t bits = float_to_bits(v);
  const uint32_t mag = bits & 0x7FFFFFFFu;
  const uint32_t add = mag >= 0x7F7F0000u ? 0x7FFFu + ((bits >> 16) & 1u) : x ^ 0xFFFFu;
  return static_cast<uint16_t>(mag > 0x7F800000u ? (bits >> 16) | 0x40u : (bits + add) >> 16);
}

// float16: ulp = 2^(max(E, -14) - 10) with E the float32 exponent of |v|. |v| / ulp < 2^11, its
// floor and frac and frac * 2^16 are exact in float32 (frac * 2^16 is an integer unless
// |v| < 2^-17), and so is (floor + up) * ulp.
PGAP_HD float round_stochastic_f16(float v, uint32_t x) {
  const uint32_t bits = float_to_bits(v);
  const uint32_t mag = bits & 0x7FFFFFFFu;
  if (mag >= 0x477FE000u) return v;  // NaN, inf, or >= 65504, the largest finite float16
  int32_t e = static_cast<int32_t>(mag >> 23) - 127;
  e = e < -14 ? -14 : e;
  const float inv_ulp = bits_to_float(static_cast<uint32_t>(137 - e) << 23);  // 2^(10 - e)
  const float ulp = bits_to_float(static_cast<uint32_t>(117 + e) << 23);      // 2^(e - 10)
  const float q = bits_to_float(mag) * inv_ulp;
  const float lo = static_cast<float>(static_cast<int32_t>(q));  // floor: q >= 0
  const float frac16 = (q - lo) * 65536.0f;
  const float up = static_cast<float>(static_cast<int32_t>(x)) < frac16 ? 1.0f : 0.0f;
  return bits_to_float(float_to_bits((lo + up) * ulp) | (bits & 0x80000000u));
}

}  // namespace pgap
