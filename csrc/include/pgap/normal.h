// Uniform fold and Box-Muller of the philox4x32-10/v1 stream, in float32.
//
// u = float(2*(x >> 9) + 1) * 2^-24 lies strictly inside (0, 1) and is exact in float32.
// Pairs (u0, u1) -> (r cos 2pi u1, r sin 2pi u1), r = sqrt(-2 ln u0).
//
// log and sin/cos are evaluated by the branch-free polynomials below (Cephes coefficients,
// about one ulp) instead of libm, so that (a) host loops vectorize with no library calls and
// (b) the host and CUDA builds evaluate the very same arithmetic. The 2*pi*u argument is
// reduced exactly on u (u - q/4 is exact in float32), so no Cody-Waite reduction is needed.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "pgap/macros.h"
#include "pgap/philox.h"

namespace pgap {

PGAP_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

PGAP_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
#endif
}

// Uniform in (0, 1) from one 32-bit word (exact: 2*(x>>9)+1 < 2^24).
PGAP_HD float word_to_uniform(uint32_t x) {
  return static_cast<float>(static_cast<int32_t>(((x >> 9) << 1) | 1u)) * 5.9604644775390625e-8f;
}

// Natural log for normal positive floats (the uniforms above are >= 2^-24).
PGAP_HD float log_positive(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const bool big = m > 1.41421356237f;
  m = big ? m * 0.5f : m;  // [sqrt(1/2), sqrt(2))
  e += big ? 1 : 0;
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f + -1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f + -1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f + -1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f + -2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float y = f * z * p;
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (f + y) + fe * 0.693359375f;
}

// cos(2*pi*u) and sin(2*pi*u) for u in (0, 1).
PGAP_HD void sincos_2pi(float u, float& s, float& c) {
  const int32_t q = static_cast<int32_t>(u * 4.0f + 0.5f);  // quadrant 0..4
  const float f = u - 0.25f * static_cast<float>(q);       // exact, |f| <= 1/8
  const float x = f * 6.28318530717958647692f;             // |x| <= pi/4
  const float z = x * x;
  float sp = -1.9515295891e-4f;
  sp = sp * z + 8.3321608736e-3f;
  sp = sp * z + -1.6666654611e-1f;
  const float sx = (sp * z) * x + x;
  float cp = 2.443315711809948e-5f;
  cp = cp * z + -1.388731625493765e-3f;
  cp = cp * z + 4.166664568298827e-2f;
  const float cx = (cp * z) * z - 0.5f * z + 1.0f;
  // Quadrant fix-up without branches: swap for odd quadrants, then flip sign bits.
  const uint32_t quad = static_cast<uint32_t>(q) & 3u;
  const bool swap = (quad & 1u) != 0u;
  const float s0 = swap ? cx : sx;
  const float c0 = swap ? sx : cx;
  s = bits_to_float(float_to_bits(s0) ^ ((quad & 2u) << 30));         // quadrants 2, 3
  c = bits_to_float(float_to_bits(c0) ^ (((quad + 1u) & 2u) << 30));  // quadrants 1, 2
}

struct Normals4 {
  float z0, z1, z2, z3;
};

PGAP_HD void box_muller(uint32_t a, uint32_t b, float& z_cos, float& z_sin) {
  const float r = sqrtf(-2.0f * log_positive(word_to_uniform(a)));
  float s, c;
  sincos_2pi(word_to_uniform(b), s, c);
  z_cos = r * c;
  z_sin = r * s;
}

// The four normals xi(seed, key, 4*block + lane), lane = 0..3.
PGAP_HD Normals4 stream_block_normals(uint64_t seed, uint32_t key, uint64_t block) {
  const Words4 w = stream_block_words(seed, key, block);
  Normals4 n;
  box_muller(w.w0, w.w1, n.z0, n.z1);
  box_muller(w.w2, w.w3, n.z2, n.z3);
  return n;
}

}  // namespace pgap
