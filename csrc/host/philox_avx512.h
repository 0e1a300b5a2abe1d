// Philox4x32-10 on sixteen stream blocks at once with AVX-512F intrinsics.
//
// As philox_avx2.h, twice as wide: even and odd lanes are multiplied with vpmuludq and the
// high/low halves recombined with mask blends; the carry into the high counter word uses an
// unsigned compare mask. Bit-identical to pgap::philox4x32_10 (tests compare the generic, AVX2
// and AVX-512 builds element by element).
#pragma once
#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

#include "pgap/philox.h"

namespace pgap {
namespace host {

static inline void mulhilo_avx512(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);                       // lanes 0,2,..,14 (64-bit)
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // lanes 1,3,..,15
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// Words of blocks [b0, b0 + 16*floor(nb/16)) into w0..w3 (counter word c3 = domain: 0 for the
// Gaussian stream, kRademacherDomain for the Rademacher stream); returns the number of blocks
// written.
static inline int64_t philox_words_avx512(uint64_t seed, uint32_t key, uint32_t domain,
                                          uint64_t b0, int64_t nb, uint32_t* w0, uint32_t* w1,
                                          uint32_t* w2, uint32_t* w3) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i vkey = _mm512_set1_epi32(static_cast<int>(key));
  const __m512i vdomain = _mm512_set1_epi32(static_cast<int>(domain));
  __m512i k0s[10], k1s[10];
  for (int r = 0; r < 10; ++r) {
    k0s[r] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed) +
                                                static_cast<uint32_t>(r) * kPhiloxW0));
    k1s[r] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed >> 32) +
                                                static_cast<uint32_t>(r) * kPhiloxW1));
  }
  int64_t j = 0;
  for (; j + 16 <= nb; j += 16) {
    const uint64_t base = b0 + static_cast<uint64_t>(j);
    const __m512i lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
    __m512i c0 = _mm512_add_epi32(lo, iota);
    // Carry into the high counter word where the low word wrapped (unsigned c0 < lo).
    const __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0, lo);
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
    __m512i c1 = _mm512_mask_add_epi32(hi, wrapped, hi, one);
    __m512i c2 = vkey;
    __m512i c3 = vdomain;
    for (int r = 0; r < 10; ++r) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo_avx512(c0, m0, hi0, lo0);
      mulhilo_avx512(c2, m1, hi1, lo1);
      c0 = _mm512_ternarylogic_epi32(hi1, c1, k0s[r], 0x96);  // hi1 ^ c1 ^ k0
      c1 = lo1;
      c2 = _mm512_ternarylogic_epi32(hi0, c3, k1s[r], 0x96);  // hi0 ^ c3 ^ k1
      c3 = lo0;
    }
    _mm512_storeu_si512(w0 + j, c0);
    _mm512_storeu_si512(w1 + j, c1);
    _mm512_storeu_si512(w2 + j, c2);
    _mm512_storeu_si512(w3 + j, c3);
  }
  return j;
}

}  // namespace host
}  // namespace pgap
#endif  // __AVX512F__
