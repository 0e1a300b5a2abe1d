// The stochastic-rounding words (splitmix64-u16/v2, pgap/rounding.h) of many consecutive blocks:
// one SplitMix64 hash per block of four elements, 8 blocks per instruction with AVX-512DQ
// (vpmullq), 4 with AVX2 (the 64-bit products from three vpmuludq), one at a time otherwise.
// Bit-identical to pgap::rounding_block_hash in every build (the tests compare the generic,
// AVX2 and AVX-512 builds element by element).
//
// Included by stream_kernel.h, once per instruction-set translation unit: the functions are
// static, so each build keeps its own.
#pragma once
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "pgap/rounding.h"

namespace pgap {
namespace host {

#if defined(__AVX2__)
// a * m mod 2^64 per 64-bit lane, for m with low half m_lo and high half m_hi (both broadcast):
// a_lo*m_lo + ((a_hi*m_lo + a_lo*m_hi) << 32), every product a vpmuludq of 32-bit halves.
static inline __m256i mullo64_avx2(__m256i a, __m256i m_lo, __m256i m_hi) {
  const __m256i ll = _mm256_mul_epu32(a, m_lo);
  const __m256i hl = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m_lo);
  const __m256i lh = _mm256_mul_epu32(a, m_hi);
  return _mm256_add_epi64(ll, _mm256_slli_epi64(_mm256_add_epi64(hl, lh), 32));
}

// pgap::mix64 of each of the 4 lanes.
static inline __m256i mix64_avx2(__m256i z) {
  const __m256i m1_lo = _mm256_set1_epi64x(static_cast<long long>(kMix64M1 & 0xFFFFFFFFu));
  const __m256i m1_hi = _mm256_set1_epi64x(static_cast<long long>(kMix64M1 >> 32));
  const __m256i m2_lo = _mm256_set1_epi64x(static_cast<long long>(kMix64M2 & 0xFFFFFFFFu));
  const __m256i m2_hi = _mm256_set1_epi64x(static_cast<long long>(kMix64M2 >> 32));
  __m256i x = _mm256_xor_si256(z, _mm256_srli_epi64(z, 30));
  x = mullo64_avx2(x, m1_lo, m1_hi);
  x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 27));
  x = mullo64_avx2(x, m2_lo, m2_hi);
  return _mm256_xor_si256(x, _mm256_srli_epi64(x, 31));
}

// z_j = base + (b + 1 + j) * gamma for j = 0..3: the arguments of blocks b .. b + 3's mix64.
static inline __m256i block_args_avx2(uint64_t base, uint64_t b) {
  const uint64_t z = base + (b + 1u) * kRoundingGamma;
  return _mm256_setr_epi64x(static_cast<long long>(z), static_cast<long long>(z + kRoundingGamma),
                            static_cast<long long>(z + 2u * kRoundingGamma),
                            static_cast<long long>(z + 3u * kRoundingGamma));
}
#endif

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// pgap::mix64 of each of the 8 lanes.
static inline __m512i mix64_avx512(__m512i z) {
  __m512i x = _mm512_xor_si512(z, _mm512_srli_epi64(z, 30));
  x = _mm512_mullo_epi64(x, _mm512_set1_epi64(static_cast<long long>(kMix64M1)));
  x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 27));
  x = _mm512_mullo_epi64(x, _mm512_set1_epi64(static_cast<long long>(kMix64M2)));
  return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

// z_j = base + (b + 1 + j) * gamma for j = 0..7: the arguments of blocks b .. b + 7's mix64.
static inline __m512i block_args_avx512(uint64_t base, uint64_t b) {
  return _mm512_add_epi64(
      _mm512_set1_epi64(static_cast<long long>(base + (b + 1u) * kRoundingGamma)),
      _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
                         _mm512_set1_epi64(static_cast<long long>(kRoundingGamma))));
}
#endif

// words[4j + l] = rounding_lane_word(rounding_block_hash(base, b0 + j), l) for j in [0, nb),
// l = 0..3: on a little-endian machine, the four 16-bit words of block j are its 64-bit hash.
static inline void rounding_block_hashes(uint64_t base, uint64_t b0, int64_t nb,
                                         uint16_t* __restrict words) {
  int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  {
    const __m512i step = _mm512_set1_epi64(static_cast<long long>(8u * kRoundingGamma));
    __m512i z = block_args_avx512(base, b0);
    for (; j + 8 <= nb; j += 8) {
      _mm512_storeu_si512(words + 4 * j, mix64_avx512(z));
      z = _mm512_add_epi64(z, step);
    }
  }
#endif
#if defined(__AVX2__)
  {
    const __m256i step = _mm256_set1_epi64x(static_cast<long long>(4u * kRoundingGamma));
    __m256i z = block_args_avx2(base, b0 + static_cast<uint64_t>(j));
    for (; j + 4 <= nb; j += 4) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + 4 * j), mix64_avx2(z));
      z = _mm256_add_epi64(z, step);
    }
  }
#endif
  for (; j < nb; ++j) {
    const uint64_t x = rounding_block_hash(base, b0 + static_cast<uint64_t>(j));
    for (uint32_t l = 0; l < 4; ++l)
      words[4 * j + l] = static_cast<uint16_t>(rounding_lane_word(x, l));
  }
}

}  // namespace host
}  // namespace pgap
