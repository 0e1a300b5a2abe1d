// Stochastic rounding of float32 results into bfloat16/float16, shared by the host and CUDA
// builds (docs/rng.md, "Stochastic rounding").
//
// The rounding word of logical element e under (rounding_seed, key) is word e % 4 of
// philox4x32-10 with counter (b mod 2^32, b >> 32, key, 1), b = e / 4, and Philox key
// (rounding_seed mod 2^32, rounding_seed >> 32): counter word c3 = 1 is the rounding domain (the
// Gaussian stream uses c3 = 0, so its values are unchanged). With x that word and u24 = x >> 8,
// a float32 v becomes lo + ulp (away from zero) iff float(u24) < frac * 2^24, else lo, where
// lo = floor(|v| / ulp) * ulp, frac = |v| / ulp - floor(|v| / ulp) and ulp is the target's
// spacing at |v|; the sign is restored. NaN, +-inf and |v| >= the largest finite value are left
// to the usual round to nearest. The functions return a float32 value that the target dtype
// holds exactly (so the usual round-to-nearest store then writes it unchanged).
#pragma once
#include <cstdint>

#include "pgap/macros.h"
#include "pgap/normal.h"
#include "pgap/philox.h"

namespace pgap {

constexpr uint32_t kRoundingDomain = 1u;  // Philox counter word c3 of the rounding words

// The four rounding words of elements 4*block .. 4*block + 3.
PGAP_HD Words4 rounding_block_words(uint64_t rounding_seed, uint32_t key, uint64_t block) {
  return block_words(rounding_seed, key, kRoundingDomain, block);
}

// x[j] = the rounding word of element e0 + j, j = 0..3 (one or two Philox calls).
PGAP_HD void rounding_words4(uint64_t rounding_seed, uint32_t key, uint64_t e0, uint32_t (&x)[4]) {
  const uint32_t shift = static_cast<uint32_t>(e0 & 3u);
  const Words4 a = rounding_block_words(rounding_seed, key, e0 >> 2);
  if (shift == 0) {
    x[0] = a.w0; x[1] = a.w1; x[2] = a.w2; x[3] = a.w3;
    return;
  }
  const Words4 b = rounding_block_words(rounding_seed, key, (e0 >> 2) + 1);
  for (uint32_t j = 0; j < 4; ++j)
    x[j] = shift + j < 4 ? word_of_lane(a, shift + j) : word_of_lane(b, shift + j - 4);
}

// bfloat16: on the float32 bits, the kept part is bits >> 16 and frac * 2^24 = (bits & 0xffff)
// << 8 (exact for float32 subnormals too); a carry into the exponent is the next binade.
PGAP_HD float round_stochastic_bf16(float v, uint32_t x) {
  const uint32_t bits = float_to_bits(v);
  const uint32_t mag = bits & 0x7FFFFFFFu;
  if (mag >= 0x7F7F0000u) return v;  // NaN, inf, or >= the largest finite bfloat16
  const uint32_t up = (x >> 8) < ((mag & 0xFFFFu) << 8) ? 1u : 0u;
  return bits_to_float((bits & 0x80000000u) | (((mag >> 16) + up) << 16));
}

// float16: ulp = 2^(max(E, -14) - 10) with E the float32 exponent of |v|. |v| / ulp < 2^11, its
// floor and frac and frac * 2^24 are exact in float32 (frac * 2^24 is an integer unless
// |v| < 2^-25), and so is (floor + up) * ulp.
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
  const float frac24 = (q - lo) * 16777216.0f;
  const float up = static_cast<float>(static_cast<int32_t>(x >> 8)) < frac24 ? 1.0f : 0.0f;
  return bits_to_float(float_to_bits((lo + up) * ulp) | (bits & 0x80000000u));
}

}  // namespace pgap
