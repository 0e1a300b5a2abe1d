// The host kernels' SIMD layer, compiled once per instruction set: float32 vectors (VF, kVW
// lanes) and the 16-bit storage types to/from them, rounded to nearest or stochastically (the
// rule of pgap/rounding.h with the words of host/splitmix_simd.h, whole rows of kNR elements).
//
// Included by lowrank_kernel.h and perturb_kernel.h (through <op>_<isa>.cpp) with PGAP_ISA_NS
// defined, so every inline function stays within one build's -m flags. Built with
// -ffp-contract=off like every host file.
#pragma once
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "host/splitmix_simd.h"
#include "pgap/rounding.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including simd_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// ---- SIMD layer: float32 vectors of kVW lanes, and W's dtypes to/from them. ----------------
#if defined(__AVX512F__)
using VF = __m512;
constexpr int kVW = 16;
static inline VF vzero() { return _mm512_setzero_ps(); }
static inline VF vbcast(float s) { return _mm512_set1_ps(s); }
static inline VF vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, VF v) { _mm512_storeu_ps(p, v); }
static inline VF vfma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
static inline VF vadd(VF a, VF b) { return _mm512_add_ps(a, b); }
static inline float sfma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline VF vload_w(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore_w(float* p, VF v) { _mm512_storeu_ps(p, v); }
static inline VF vload_w(const uint16_t* p) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline __m512i bf16_nearest_bits(__m512i u) {  // BF16::store of the float32 bits u, per 32-bit lane
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
  return _mm512_mask_blend_epi32(nan, rounded, quiet);
}
static inline void vstore_w(uint16_t* p, VF v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtepi32_epi16(bf16_nearest_bits(_mm512_castps_si512(v))));
}
static inline VF vload_w(const _Float16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
static inline void vstore_w(_Float16* p, VF v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#elif defined(__AVX2__)
using VF = __m256;
constexpr int kVW = 8;
static inline VF vzero() { return _mm256_setzero_ps(); }
static inline VF vbcast(float s) { return _mm256_set1_ps(s); }
static inline VF vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, VF v) { _mm256_storeu_ps(p, v); }
static inline VF vfma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
static inline VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
static inline float sfma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline VF vload_w(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore_w(float* p, VF v) { _mm256_storeu_ps(p, v); }
static inline VF vload_w(const uint16_t* p) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline __m256i bf16_nearest_bits(__m256i u) {  // BF16::store of the float32 bits u, per 32-bit lane
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                         _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}
static inline void store_u16(uint16_t* p, __m256i r) {  // the low halves of r's 32-bit lanes (< 2^16)
  // 16-bit lanes [r0..3, r0..3 | r4..7, r4..7] -> r0..7 in the low 128 bits.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
static inline void vstore_w(uint16_t* p, VF v) { store_u16(p, bf16_nearest_bits(_mm256_castps_si256(v))); }
static inline VF vload_w(const _Float16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline void vstore_w(_Float16* p, VF v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#else
// Portable: GCC/Clang vector extensions (SSE2 on x86-64, NEON on arm64), no FMA.
typedef float VF __attribute__((vector_size(16)));
typedef float VFUnaligned __attribute__((vector_size(16), aligned(4)));
constexpr int kVW = 4;
static inline VF vzero() { return VF{0.0f, 0.0f, 0.0f, 0.0f}; }
static inline VF vbcast(float s) { return VF{s, s, s, s}; }
static inline VF vload(const float* p) { return *reinterpret_cast<const VFUnaligned*>(p); }
static inline void vstore(float* p, VF v) { *reinterpret_cast<VFUnaligned*>(p) = v; }
static inline VF vfma(VF a, VF b, VF c) { return a * b + c; }
static inline VF vadd(VF a, VF b) { return a + b; }
static inline float sfma(float a, float b, float c) { return a * b + c; }
#endif

constexpr int kNV = 2;            // vectors per row (a low-rank micro-tile row, a perturb step)
constexpr int kNR = kNV * kVW;    // elements per row

// ---- Stochastic rounding of whole 16-bit rows of kNR elements (pgap/rounding.h) ------------
// row_words(base, g): the rounding words of elements g .. g + kNR - 1 under the hash state base,
// in 16-bit lanes: the kNR / 4 blocks from g / 4 in one vector of hashes, and when g % 4 != 0
// the next ones too, shifted down by g % 4 words. RowWordStream(base, g), g % 4 == 0: next()
// returns row_words(base, g), then row_words(base, g + kNR), ... (one hash vector per row).
// store_row_stochastic(p, x, words): p[l] = D::store_stochastic(lane l of x, word l) for l in
// [0, kNR), D = BF16 or F16.
#if defined(__AVX2__) || defined(__AVX512F__)
typedef int32_t VI32 __attribute__((vector_size(sizeof(VF))));  // VF's lanes as integers
typedef uint32_t VU32 __attribute__((vector_size(sizeof(VF))));
#endif
#if defined(__AVX512F__)
static_assert(kNR == 32, "one vector of 8 hashes per row");
using VW = __m512i;  // kNR 16-bit words
static inline VI32 word_lanes(VW words, int v) {  // words v*kVW .. v*kVW + kVW - 1, widened
  return reinterpret_cast<VI32>(_mm512_cvtepu16_epi32(v == 0 ? _mm512_castsi512_si256(words)
                                                             : _mm512_extracti64x4_epi64(words, 1)));
}
static inline bool all_lanes(VI32 m) { return _mm512_movepi32_mask(reinterpret_cast<__m512i>(m)) == 0xFFFF; }
static inline __m512i row_words(uint64_t base, uint64_t g) {
  const uint64_t b = g >> 2;
  const int s = static_cast<int>(g & 3u);
  const __m512i h = mix64_avx512(block_args_avx512(base, b));
  if (s == 0) return h;
  const __m512i next = mix64_avx512(block_args_avx512(base, b + 8u));
  const __m512i idx = _mm512_add_epi16(
      _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13,
                       12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
      _mm512_set1_epi16(static_cast<short>(s)));
  return _mm512_permutex2var_epi16(h, idx, next);  // 16-bit lane l <- lane l + s of (h, next)
}
struct RowWordStream {
  __m512i z;  // the mix64 arguments of the next row's 8 blocks
  RowWordStream(uint64_t base, uint64_t g) : z(block_args_avx512(base, g >> 2)) {}
  __m512i next() {
    const __m512i h = mix64_avx512(z);
    z = _mm512_add_epi64(z, _mm512_set1_epi64(static_cast<long long>(8u * kRoundingGamma)));
    return h;
  }
};
// In 16-bit lanes (round_stochastic_bf16_bits): the high half of the float32 bits, plus one
// where word < the low half; store()'s rounding where |v| >= the largest finite bfloat16 (NaN
// and inf included).
static inline void store_row_stochastic(uint16_t* p, const VF (&x)[kNV], __m512i words) {
  const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34,
                                        32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  const __m512i u0 = _mm512_castps_si512(x[0]), u1 = _mm512_castps_si512(x[1]);
  const __m512i hi = _mm512_permutex2var_epi16(u0, odd, u1);
  const __m512i lo = _mm512_permutex2var_epi16(u0, even, u1);
  __m512i r = _mm512_mask_add_epi16(hi, _mm512_cmpgt_epu16_mask(lo, words), hi,
                                    _mm512_set1_epi16(1));
  const __mmask32 big = _mm512_cmpge_epu16_mask(_mm512_and_si512(hi, _mm512_set1_epi16(0x7FFF)),
                                                _mm512_set1_epi16(0x7F7F));
  if (big)
    r = _mm512_mask_blend_epi16(big, r, _mm512_permutex2var_epi16(bf16_nearest_bits(u0), even,
                                                                  bf16_nearest_bits(u1)));
  _mm512_storeu_si512(p, r);
}
#elif defined(__AVX2__)
static_assert(kNR == 16, "one vector of 4 hashes per row");
using VW = __m256i;  // kNR 16-bit words
static inline VI32 word_lanes(VW words, int v) {  // words v*kVW .. v*kVW + kVW - 1, widened
  return reinterpret_cast<VI32>(_mm256_cvtepu16_epi32(v == 0 ? _mm256_castsi256_si128(words)
                                                             : _mm256_extracti128_si256(words, 1)));
}
static inline bool all_lanes(VI32 m) {
  return _mm256_movemask_ps(reinterpret_cast<__m256>(m)) == 0xFF;
}
static inline __m256i row_words(uint64_t base, uint64_t g) {
  const uint64_t b = g >> 2;
  const __m256i h = mix64_avx2(block_args_avx2(base, b));
  if ((g & 3u) == 0) return h;
  // 128-bit lanes (h.hi, next.lo): per lane, alignr shifts (that : h's lane) down by s words
  const __m256i mid = _mm256_permute2x128_si256(h, mix64_avx2(block_args_avx2(base, b + 4u)), 0x21);
  switch (g & 3u) {
    case 1: return _mm256_alignr_epi8(mid, h, 2);
    case 2: return _mm256_alignr_epi8(mid, h, 4);
    default: return _mm256_alignr_epi8(mid, h, 6);
  }
}
struct RowWordStream {
  __m256i z;  // the mix64 arguments of the next row's 4 blocks
  RowWordStream(uint64_t base, uint64_t g) : z(block_args_avx2(base, g >> 2)) {}
  __m256i next() {
    const __m256i h = mix64_avx2(z);
    z = _mm256_add_epi64(z, _mm256_set1_epi64x(static_cast<long long>(4u * kRoundingGamma)));
    return h;
  }
};
// In 32-bit lanes (round_stochastic_bf16_bits): (bits + 0xFFFF - word) >> 16; store()'s rounding
// where |v| >= the largest finite bfloat16 (NaN and inf included).
// Both vectors' results are packed into one 256-bit store; one test for the rare big lanes.
static inline void store_row_stochastic(uint16_t* p, const VF (&x)[kNV], __m256i words) {
  static_assert(kNV == 2, "two vectors of 8 lanes per 256-bit store");
  const __m256i wc = _mm256_xor_si256(words, _mm256_set1_epi32(-1));  // 0xFFFF - word
  const __m256i wcs[kNV] = {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(wc)),
                            _mm256_cvtepu16_epi32(_mm256_extracti128_si256(wc, 1))};
  __m256i r[kNV], big[kNV];
  for (int v = 0; v < kNV; ++v) {
    const __m256i u = _mm256_castps_si256(x[v]);
    r[v] = _mm256_srli_epi32(_mm256_add_epi32(u, wcs[v]), 16);
    big[v] = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                _mm256_set1_epi32(0x7F7EFFFF));
  }
  const __m256i any = _mm256_or_si256(big[0], big[1]);
  if (!_mm256_testz_si256(any, any)) {
    for (int v = 0; v < kNV; ++v)
      r[v] = _mm256_blendv_epi8(r[v], bf16_nearest_bits(_mm256_castps_si256(x[v])), big[v]);
  }
  // 64-bit chunks [r0 0..3, r1 0..3, r0 4..7, r1 4..7] -> r0 0..7, r1 0..7
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xD8));
}
#endif

#if defined(__AVX2__) || defined(__AVX512F__)
// round_stochastic_f16(v, x) per lane, x the rounding words, on integers (the same bits as the
// float32 rule, which is exact: up iff x < frac * 2^16); the AVX2 build's float16 rows.
// 2^-14 <= |v| < 65504 (float16 normals): frac * 2^16 is the 13 mantissa bits float16 drops,
// times 8, so up iff x >> 3 < those bits iff adding 0x1FFF - (x >> 3) carries out of them; the
// carry adds the ulp 1 << 13 (into the exponent as (lo + 1) * ulp does), and the 13 bits are
// cleared.
// |v| < 2^-14 (float16 subnormals and zero; ulp 2^-24): with C = ceil(|v| * 2^40) = lo * 2^16 +
// ceil(frac * 2^16) (|v| * 2^40 < 2^26 is exact, and x < frac * 2^16 iff x < its ceiling, x an
// integer), lo + up = (C + 0xFFFF - x) >> 16, at most 1024 (2^-14, the smallest normal), and
// (lo + up) * 2^-24 is exact in float32.
// |v| >= 65504, inf and NaN: v (the store rounds it to nearest).
static inline VF round_stochastic_f16_v(VF v, VI32 x) {
  const VU32 u = reinterpret_cast<VU32>(v);
  const VU32 mag = u & 0x7FFFFFFFu;
  const VI32 normal = mag - 0x38800000u < 0x477FE000u - 0x38800000u;
  const VF r = reinterpret_cast<VF>((u + (0x1FFFu - (reinterpret_cast<VU32>(x) >> 3))) & ~0x1FFFu);
  if (all_lanes(normal)) return r;
  const VU32 small = mag < 0x38800000u ? mag : 0x38800000u;  // keeps |v| * 2^40 <= 2^26 everywhere
  const VF q = reinterpret_cast<VF>(small) * 0x1p40f;
  const VI32 t = __builtin_convertvector(q, VI32);  // floor: q >= 0
  const VI32 c = t - (__builtin_convertvector(t, VF) < q);  // ceil (a true comparison is -1)
  const VF sub = __builtin_convertvector((c + 0xFFFF - x) >> 16, VF) * 0x1p-24f;
  const VF s = reinterpret_cast<VF>(reinterpret_cast<VU32>(sub) | (u & 0x80000000u));
  return normal ? r : (mag < 0x38800000u ? s : v);
}
#if defined(__AVX512F__)
// AVX-512: the same bits in 16-bit lanes, without F16C. hi/lo are the high/low halves of the
// float32 bits. Where 2^-14 <= |v| < 65504 the float16 bits of the truncated value are sign |
// (exp8 - 112) | the top 10 mantissa bits: ((hi << 3) | (lo >> 13)) ^ 0x4000 in the low 15 bits
// (exp8 - 112 is in [1, 30], so its low 5 bits are exp8's with bit 4 flipped), plus one (a carry
// into the exponent as above) where x >> 3 < lo & 0x1FFF, i.e. x < lo << 3 in 16 bits. Where
// |v| < 2^-14 they are lo + up of the rule above: with C = |v| * 2^40 converted rounding up,
// (C >> 16) + (x < (C & 0xFFFF)) (where ceil(frac * 2^16) = 2^16 the carry is in C >> 16; 1024
// is the smallest normal's bits). Where |v| >= 65504 (inf and NaN too): vcvtps2ph of v, the
// store's round to nearest. Rows with only 2^-14 <= |v| < 65280 skip both tests.
static inline void store_row_stochastic(_Float16* p, const VF (&x)[kNV], VW words) {
  const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34,
                                        32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  const __m512i one = _mm512_set1_epi16(1);
  const __m512i u0 = _mm512_castps_si512(x[0]), u1 = _mm512_castps_si512(x[1]);
  const __m512i hi = _mm512_permutex2var_epi16(u0, odd, u1);
  const __m512i lo = _mm512_permutex2var_epi16(u0, even, u1);
  __m512i h = _mm512_ternarylogic_epi32(_mm512_slli_epi16(hi, 3), _mm512_srli_epi16(lo, 13),
                                        _mm512_set1_epi16(0x4000), 0x56);  // (A | B) ^ C
  h = _mm512_mask_add_epi16(h, _mm512_cmpgt_epu16_mask(_mm512_slli_epi16(lo, 3), words), h, one);
  const __m512i mag_hi = _mm512_and_si512(hi, _mm512_set1_epi16(0x7FFF));
  const bool all_fast = _mm512_cmplt_epu16_mask(_mm512_sub_epi16(mag_hi, _mm512_set1_epi16(0x3880)),
                                                _mm512_set1_epi16(0x477F - 0x3880)) == 0xFFFFFFFFu;
  if (!all_fast) {
    const __mmask32 small = _mm512_cmplt_epu16_mask(mag_hi, _mm512_set1_epi16(0x3880));
    if (small) {  // C; lanes with |v| * 2^40 >= 2^31 convert to 0x80000000 and are not used
      const int up = _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC;
      const __m512 s40 = _mm512_set1_ps(0x1p40f);
      const __m512i c0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_abs_ps(x[0]), s40), up);
      const __m512i c1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_abs_ps(x[1]), s40), up);
      const __m512i c_hi = _mm512_permutex2var_epi16(c0, odd, c1);
      const __m512i c_lo = _mm512_permutex2var_epi16(c0, even, c1);
      h = _mm512_mask_blend_epi16(
          small, h, _mm512_mask_add_epi16(c_hi, _mm512_cmpgt_epu16_mask(c_lo, words), c_hi, one));
    }
  }
  h = _mm512_ternarylogic_epi32(h, hi, _mm512_set1_epi16(0x7FFF), 0xE4);  // sign: C ? A : B
  if (!all_fast && _mm512_cmpge_epu16_mask(mag_hi, _mm512_set1_epi16(0x477F))) {  // |v| >= 65280
    const __m512i mag_mask = _mm512_set1_epi32(0x7FFFFFFF), max = _mm512_set1_epi32(0x477FE000);
    const __mmask32 big =
        static_cast<__mmask32>(_mm512_cmpge_epu32_mask(_mm512_and_si512(u0, mag_mask), max)) |
        (static_cast<__mmask32>(_mm512_cmpge_epu32_mask(_mm512_and_si512(u1, mag_mask), max)) << 16);
    const int nf = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    h = _mm512_mask_blend_epi16(big, h, _mm512_inserti64x4(_mm512_castsi256_si512(
                                            _mm512_cvtps_ph(x[0], nf)), _mm512_cvtps_ph(x[1], nf), 1));
  }
  _mm512_storeu_si512(p, h);
}
#else
static inline void store_row_stochastic(_Float16* p, const VF (&x)[kNV], VW words) {
#pragma GCC unroll 4
  for (int v = 0; v < kNV; ++v) vstore_w(p + v * kVW, round_stochastic_f16_v(x[v], word_lanes(words, v)));
}
#endif
#endif

}  // namespace PGAP_ISA_NS
}  // namespace host
}  // namespace pgap
