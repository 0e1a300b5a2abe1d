// Host stream code shared by the perturbation and low-rank kernels, compiled once per ISA.
//
// Included (through perturb_kernel.h or lowrank_kernel.h) by the <op>_<isa>.cpp translation
// units with PGAP_ISA_NS defined, so that every inline function lives in an ISA namespace and
// never crosses builds with different -m flags (ODR). Compiled with -ffp-contract=off: the
// normals are bit-identical in every build that includes this header.
#pragma once
#include <cmath>
#include <cstdint>

#include "pgap/normal.h"
#include "host/perturb.h"
#include "host/philox_avx2.h"
#include "host/philox_avx512.h"
#include "host/splitmix_simd.h"
#include "pgap/perturb_args.h"
#include "pgap/rademacher.h"
#include "pgap/rounding.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including stream_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// Philox words of blocks [b0, b0 + nb) for (seed, key) and counter word c3 = domain (0: the
// Gaussian stream, kRademacherDomain: the Rademacher stream), one array per output word.
static void philox_words(uint64_t seed, uint32_t key, uint32_t domain, uint64_t b0, int64_t nb,
                         uint32_t* __restrict w0, uint32_t* __restrict w1,
                         uint32_t* __restrict w2, uint32_t* __restrict w3) {
  int64_t j = 0;
#if defined(__AVX512F__)
  j = philox_words_avx512(seed, key, domain, b0, nb, w0, w1, w2, w3);
#endif
#if defined(__AVX2__)
  j += philox_words_avx2(seed, key, domain, b0 + static_cast<uint64_t>(j), nb - j, w0 + j, w1 + j,
                         w2 + j, w3 + j);
#endif
  for (; j < nb; ++j) {
    const Words4 w = block_words(seed, key, domain, b0 + static_cast<uint64_t>(j));
    w0[j] = w.w0;
    w1[j] = w.w1;
    w2[j] = w.w2;
    w3[j] = w.w3;
  }
}

// acc[4j + lane] (+)= coeff * xi(seed, key, 4*(b0 + j) + lane) for j in [0, nb).
// Two passes: Philox words, then Box-Muller in a loop of 32-bit lanes only (vectorizes fully).
template <bool kFirst>
static void accumulate_normals(uint64_t seed, uint32_t key, uint64_t b0, int64_t nb, float coeff,
                               float* __restrict acc) {
  alignas(64) uint32_t w0[kHostChunkBlocks], w1[kHostChunkBlocks], w2[kHostChunkBlocks],
      w3[kHostChunkBlocks];
  philox_words(seed, key, 0u, b0, nb, w0, w1, w2, w3);
#pragma omp simd
  for (int64_t j = 0; j < nb; ++j) {
    float z0, z1, z2, z3;
    box_muller(w0[j], w1[j], z0, z1);
    box_muller(w2[j], w3[j], z2, z3);
    if (kFirst) {
      acc[4 * j + 0] = coeff * z0;
      acc[4 * j + 1] = coeff * z1;
      acc[4 * j + 2] = coeff * z2;
      acc[4 * j + 3] = coeff * z3;
    } else {
      acc[4 * j + 0] += coeff * z0;
      acc[4 * j + 1] += coeff * z1;
      acc[4 * j + 2] += coeff * z2;
      acc[4 * j + 3] += coeff * z3;
    }
  }
}

// Sum of the seeded streams over stream indices [g_lo, g_lo + len), len <= kHostChunk:
// acc[shift + l] = sum_j coeffs[j] * xi(seeds[j], key, g_lo + l), shift = g_lo % 4 (returned).
// Writes acc[0, 4*ceil((shift + len) / 4)), at most len + 6 floats.
static int64_t stream_sum(const StreamArgs& sa, uint32_t key, uint64_t g_lo, int64_t len,
                          float* __restrict acc) {
  const uint64_t g_hi = g_lo + static_cast<uint64_t>(len);  // exclusive
  const uint64_t b0 = g_lo >> 2;
  const int64_t nb = static_cast<int64_t>(((g_hi + 3) >> 2) - b0);
  if (sa.n_seeds == 0) {
    for (int64_t k = 0; k < 4 * nb; ++k) acc[k] = 0.0f;
  } else {
    accumulate_normals<true>(sa.seeds[0], key, b0, nb, sa.coeffs[0], acc);
    for (int64_t j = 1; j < sa.n_seeds; ++j)
      accumulate_normals<false>(sa.seeds[j], key, b0, nb, sa.coeffs[j], acc);
  }
  return static_cast<int64_t>(g_lo - (b0 << 2));
}

// The second step of accumulate_signs: acc from the words w[q][j] of blocks j = 0 .. nb - 1.
// The inner loop over a word's 32 bits vectorizes (variable shifts and a sign flip).
template <bool kFirst>
static void expand_signs(const uint32_t (&w)[4][kHostRademacherBlocks], int64_t nb, float coeff,
                         float* __restrict acc) {
  for (int64_t j = 0; j < nb; ++j) {
    for (int q = 0; q < 4; ++q) {
      const uint32_t x = w[q][j];
      float* __restrict a = acc + kRademacherBlockElements * j + 32 * q;
#pragma omp simd
      for (uint32_t k = 0; k < 32; ++k) {
        const float term = rademacher_term(coeff, rademacher_sign(x, k));
        a[k] = kFirst ? term : a[k] + term;
      }
    }
  }
}

// acc[128 j + 32 q + k] (+)= coeff * rho(seed, key, 128 (b0 + j) + 32 q + k) for j in [0, nb):
// bit k of word q of Rademacher block b0 + j (pgap/rademacher.h). One Philox call per 128
// elements, vectorized over blocks as for the normals.
template <bool kFirst>
static void accumulate_signs(uint64_t seed, uint32_t key, uint64_t b0, int64_t nb, float coeff,
                             float* __restrict acc) {
  alignas(64) uint32_t w[4][kHostRademacherBlocks];
  philox_words(seed, key, kRademacherDomain, b0, nb, w[0], w[1], w[2], w[3]);
  expand_signs<kFirst>(w, nb, coeff, acc);
}

// As stream_sum for the Rademacher stream: acc[shift + l] = sum_j coeffs[j] *
// rho(seeds[j], key, g_lo + l), shift = g_lo % 128 (returned), summed in seed order from
// coeffs[0] * rho_0. Writes acc[0, 128*ceil((shift + len) / 128)), at most len + 254 floats.
static int64_t rademacher_sum(const StreamArgs& sa, uint32_t key, uint64_t g_lo, int64_t len,
                              float* __restrict acc) {
  const uint64_t g_hi = g_lo + static_cast<uint64_t>(len);  // exclusive
  const uint64_t b0 = rademacher_block(g_lo);
  const int64_t nb = static_cast<int64_t>(rademacher_block(g_hi + kRademacherBlockElements - 1) - b0);
  if (sa.n_seeds == 0) {
    for (int64_t k = 0; k < kRademacherBlockElements * nb; ++k) acc[k] = 0.0f;
  } else {
    accumulate_signs<true>(sa.seeds[0], key, b0, nb, sa.coeffs[0], acc);
    for (int64_t j = 1; j < sa.n_seeds; ++j)
      accumulate_signs<false>(sa.seeds[j], key, b0, nb, sa.coeffs[j], acc);
  }
  return static_cast<int64_t>(g_lo - b0 * kRademacherBlockElements);
}

// Rounding words of elements [g_lo, g_lo + len), len <= kHostChunk, under the rounding hash
// state `base` = rounding_base(rounding seed, key) (pgap/rounding.h): words[shift + l] is the
// word of element g_lo + l, shift = g_lo % 4 (returned). Writes words[0, 4*ceil((shift + len) /
// 4)), at most len + 6 words. One SplitMix64 hash per 4 elements (host/splitmix_simd.h).
static int64_t rounding_words(uint64_t base, uint64_t g_lo, int64_t len,
                              uint16_t* __restrict words) {
  const uint64_t b0 = g_lo >> 2;
  const int64_t nb = static_cast<int64_t>(((g_lo + static_cast<uint64_t>(len) + 3) >> 2) - b0);
  rounding_block_hashes(base, b0, nb, words);
  return static_cast<int64_t>(g_lo - (b0 << 2));
}

// Storage types: float32 compute, one rounding on store. store_stochastic(v, x) is v rounded
// stochastically to the storage type's grid with the 16-bit rounding word x (pgap/rounding.h)
// and stored (NaN, inf and values beyond the largest finite one as store() does); float32 keeps v.
struct F32 {
  using Storage = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
  static float store_stochastic(float v, uint32_t) { return v; }
};

struct BF16 {
  using Storage = uint16_t;
  static float load(uint16_t x) { return bits_to_float(static_cast<uint32_t>(x) << 16); }
  static uint16_t store(float f) {  // round to nearest even, NaN stays NaN
    const uint32_t u = float_to_bits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
  }
  // store(round_stochastic_bf16(v, x)), bit for bit, in one step on the float32 bits
  static uint16_t store_stochastic(float v, uint32_t x) { return round_stochastic_bf16_bits(v, x); }
};

struct F16 {
  using Storage = _Float16;
  static float load(_Float16 x) { return static_cast<float>(x); }
  static _Float16 store(float f) { return static_cast<_Float16>(f); }
  static _Float16 store_stochastic(float v, uint32_t x) {
    return store(round_stochastic_f16(v, x));
  }
};

}  // namespace PGAP_ISA_NS
}  // namespace host
}  // namespace pgap
