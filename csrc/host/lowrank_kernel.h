// Body of the host low-rank kernels, compiled once per instruction set.
//
// Included by lowrank_<isa>.cpp with PGAP_ISA_NS defined; each translation unit is built with
// its own -m flags, and host/lowrank.cpp picks the one of the ISA selected for perturb.
//
// Both ops are BLIS-style products with a register-blocked micro-kernel (kMR rows x kNR columns
// of float32 accumulators, kNR = kNV vectors) that runs over the whole inner dimension:
// * lowrank_update: W <- decay*W + L*R^T. Per tile of W (kTileRows x nb, nb sized so the packed
//   R panel stays in L2), R rows are packed into kNR-wide panels and each kMR-row panel of L into
//   a small buffer; the micro-kernel's epilogue loads the W tile, applies decay, adds, rounds
//   once to W's dtype and stores in place. Tiles lie on a fixed grid and every element is summed
//   in the same order, so the result does not depend on the thread count.
// * gaussian_sketch: tiles of the implicit A are drawn by stream_sum (the perturb code, same
//   bits) into an L2-sized buffer and multiplied with kNR-wide panels of omega; a thread owns
//   its output rows (row blocks of A, or column blocks when transposed).
// FMAs are explicit intrinsics (the file is built with -ffp-contract=off like every host file:
// the normals must stay bit-exact).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "host/stream_kernel.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including lowrank_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// ---- SIMD layer: float32 vectors of kVW lanes, and W's dtypes to/from them. ----------------
#if defined(__AVX512F__)
using VF = __m512;
constexpr int kVW = 16;
constexpr int kMR = 12;  // 24 accumulators + 2 panel vectors of 32 zmm registers
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
constexpr int kMR = 6;  // 12 accumulators + 2 panel vectors + 1 broadcast of 16 ymm registers
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
constexpr int kMR = 6;  // 12 accumulators + 2 panel vectors + 1 broadcast of 16 xmm registers
static inline VF vzero() { return VF{0.0f, 0.0f, 0.0f, 0.0f}; }
static inline VF vbcast(float s) { return VF{s, s, s, s}; }
static inline VF vload(const float* p) { return *reinterpret_cast<const VFUnaligned*>(p); }
static inline void vstore(float* p, VF v) { *reinterpret_cast<VFUnaligned*>(p) = v; }
static inline VF vfma(VF a, VF b, VF c) { return a * b + c; }
static inline VF vadd(VF a, VF b) { return a + b; }
static inline float sfma(float a, float b, float c) { return a * b + c; }
#endif

constexpr int kNV = 2;            // vectors per micro-tile row
constexpr int kNR = kNV * kVW;    // micro-tile columns

// ---- Stochastic rounding of whole 16-bit micro-tile rows (pgap/rounding.h) -----------------
// row_words(base, g): the rounding words of elements g .. g + kNR - 1 under the hash state base,
// in 16-bit lanes: the kNR / 4 blocks from g / 4 in one vector of hashes, and when g % 4 != 0
// the next ones too, shifted down by g % 4 words. store_row_stochastic(p, x, words): p[l] =
// D::store_stochastic(lane l of x, word l) for l in [0, kNR), D = BF16 or F16.
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
// In 32-bit lanes (round_stochastic_bf16_bits): (bits + 0xFFFF - word) >> 16; store()'s rounding
// where |v| >= the largest finite bfloat16 (NaN and inf included).
static inline void store_row_stochastic(uint16_t* p, const VF (&x)[kNV], __m256i words) {
  const __m256i wc = _mm256_xor_si256(words, _mm256_set1_epi32(-1));  // 0xFFFF - word
  const __m256i wcs[kNV] = {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(wc)),
                            _mm256_cvtepu16_epi32(_mm256_extracti128_si256(wc, 1))};
  for (int v = 0; v < kNV; ++v) {
    const __m256i u = _mm256_castps_si256(x[v]);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, wcs[v]), 16);
    const __m256i big = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                           _mm256_set1_epi32(0x7F7EFFFF));
    if (!_mm256_testz_si256(big, big)) r = _mm256_blendv_epi8(r, bf16_nearest_bits(u), big);
    store_u16(p + v * kVW, r);
  }
}
#endif

#if defined(__AVX2__) || defined(__AVX512F__)
// round_stochastic_f16(v, x) per lane, x the rounding words: the same float32 operations in the
// same order (so the same bits), in GCC vector arithmetic.
static inline VF round_stochastic_f16_float(VF v, VI32 x) {
  const VU32 u = reinterpret_cast<VU32>(v);
  const VU32 mag = u & 0x7FFFFFFFu;
  VI32 e = reinterpret_cast<VI32>(mag >> 23) - 127;
  e = e < -14 ? -14 : e;
  const VF inv_ulp = reinterpret_cast<VF>((137 - e) << 23);  // 2^(10 - e)
  const VF ulp = reinterpret_cast<VF>((117 + e) << 23);      // 2^(e - 10)
  const VF q = reinterpret_cast<VF>(mag) * inv_ulp;
  const VF lo = __builtin_convertvector(__builtin_convertvector(q, VI32), VF);  // q >= 0
  const VF frac16 = (q - lo) * 65536.0f;
  const VF up = __builtin_convertvector(x, VF) < frac16 ? 1.0f : 0.0f;
  const VU32 r = reinterpret_cast<VU32>((lo + up) * ulp) | (u & 0x80000000u);
  return mag >= 0x477FE000u ? v : reinterpret_cast<VF>(r);
}
// The same, on the bits where 2^-14 <= |v| < 65504 (float16 normals): frac * 2^16 is the 13
// mantissa bits float16 drops, times 8, and the ulp added is 1 << 13 (a carry moves into the
// exponent as (lo + 1) * ulp does). Other lanes take round_stochastic_f16_float.
static inline VF round_stochastic_f16_v(VF v, VI32 x) {
  const VU32 u = reinterpret_cast<VU32>(v);
  const VI32 normal = (u & 0x7FFFFFFFu) - 0x38800000u < 0x477FE000u - 0x38800000u;
  const VU32 up = ((u & 0x1FFFu) << 3) > reinterpret_cast<VU32>(x) ? 0x2000u : 0u;
  const VF r = reinterpret_cast<VF>((u & ~0x1FFFu) + up);
  if (all_lanes(normal)) return r;
  return normal ? r : round_stochastic_f16_float(v, x);
}
static inline void store_row_stochastic(_Float16* p, const VF (&x)[kNV], VW words) {
#pragma GCC unroll 4
  for (int v = 0; v < kNV; ++v) vstore_w(p + v * kVW, round_stochastic_f16_v(x[v], word_lanes(words, v)));
}
#endif

// acc = sum_p a(i, p) * b[p][0, kNR) over p in [0, kc): a(i, p) = a[i*a_rs + p*a_cs], b a
// packed panel of kNR floats per p.
static inline __attribute__((always_inline)) void micro_kernel(
    int64_t kc, const float* __restrict a, int64_t a_rs, int64_t a_cs, const float* __restrict b,
    VF (&acc)[kMR][kNV]) {
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[i][v] = vzero();
#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; ++p) {
    VF bv[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) bv[v] = vload(b + p * kNR + v * kVW);
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      const VF ai = vbcast(a[i * a_rs + p * a_cs]);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[i][v] = vfma(ai, bv[v], acc[i][v]);
    }
  }
}

// 64-byte aligned float buffer, zero-filled.
struct FloatBuffer {
  float* p = nullptr;
  explicit FloatBuffer(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
  }
  ~FloatBuffer() { std::free(p); }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
};

// ---- lowrank_update ------------------------------------------------------------------------

constexpr int64_t kTileRows = 96;              // rows of W per tile (a multiple of kMR)
constexpr int64_t kPanelBytes = 160 * 1024;    // packed R per tile, kept in L2
constexpr int64_t kMaxTileCols = 2048;

// bpack[c / kNR][p][c % kNR] = right[(c0 + c)*k + p] for c in [0, nb), zero past nb.
static void pack_right(const float* __restrict right, int64_t k, int64_t c0, int64_t nb,
                       float* __restrict bpack) {
  const int64_t panels = (nb + kNR - 1) / kNR;
  for (int64_t jp = 0; jp < panels; ++jp) {
    float* dst = bpack + jp * k * kNR;
    for (int jj = 0; jj < kNR; ++jj) {
      const int64_t c = jp * kNR + jj;
      if (c < nb) {
        const float* src = right + (c0 + c) * k;
        for (int64_t p = 0; p < k; ++p) dst[p * kNR + jj] = src[p];
      } else {
        for (int64_t p = 0; p < k; ++p) dst[p * kNR + jj] = 0.0f;
      }
    }
  }
}

// apack[p][i] = left[(r0 + i)*k + p] for i < mr, zero for i in [mr, kMR).
static void pack_left(const float* __restrict left, int64_t k, int64_t r0, int64_t mr,
                      float* __restrict apack) {
  for (int i = 0; i < kMR; ++i) {
    if (i < mr) {
      const float* src = left + (r0 + i) * k;
      for (int64_t p = 0; p < k; ++p) apack[p * kMR + i] = src[p];
    } else {
      for (int64_t p = 0; p < k; ++p) apack[p * kMR + i] = 0.0f;
    }
  }
}

// Where the stochastic rounding of a block of W reads its words (pgap/rounding.h): element
// (i, j) of the block rounds with the word of element index + i*ld + j under the hash state
// base = rounding_base(rounding seed, key).
struct TileRounding {
  uint64_t base;   // rounding_base(rounding seed, key) of W
  uint64_t index;  // rounding index of the block's element (0, 0)
  int64_t ld;      // rounding-index distance between rows (W's n)
  TileRounding at(int64_t i, int64_t j) const {  // the block starting at element (i, j)
    return TileRounding{base, index + static_cast<uint64_t>(i * ld + j), ld};
  }
};

// W tile (rows [0, mr), columns [0, nr), row stride ldw) <- decay*W + acc, one rounding: to
// nearest, or (kStochastic) with the rounding words of `tr`.
template <class D, bool kOverwrite, bool kStochastic>
static inline __attribute__((always_inline)) void store_tile(
    typename D::Storage* __restrict w, int64_t ldw, int64_t mr, int64_t nr, float decay,
    VF (&acc)[kMR][kNV], const TileRounding& tr) {
#if defined(__AVX2__) || defined(__AVX512F__)
  if (mr == kMR && nr == kNR) {  // full tiles in vectors
    const VF vd = vbcast(decay);
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      typename D::Storage* row = w + i * ldw;
      VF x[kNV];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v)
        x[v] = kOverwrite ? acc[i][v] : vfma(vd, vload_w(row + v * kVW), acc[i][v]);
      if constexpr (kStochastic) {
        store_row_stochastic(row, x, row_words(tr.base, tr.at(i, 0).index));
      } else {
#pragma GCC unroll 4
        for (int v = 0; v < kNV; ++v) vstore_w(row + v * kVW, x[v]);
      }
    }
    return;
  }
#endif
  alignas(64) float t[kMR][kNR];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) vstore(&t[i][v * kVW], acc[i][v]);
  for (int64_t i = 0; i < mr; ++i) {
    typename D::Storage* row = w + i * ldw;
    alignas(64) uint16_t words[kNR + 8];
    int64_t shift = 0;
    if (kStochastic) shift = rounding_words(tr.base, tr.at(i, 0).index, nr, words);
    for (int64_t j = 0; j < nr; ++j) {
      const float v = kOverwrite ? t[i][j] : sfma(decay, D::load(row[j]), t[i][j]);
      row[j] = kStochastic ? D::store_stochastic(v, words[shift + j]) : D::store(v);
    }
  }
}

// W tile (rows x cols at w, row stride ldw) <- decay*W + L*R^T, one rounding: L is the tile's
// rows x k block (row-major, row stride k), bpack the tile's columns of R packed by pack_right.
// apack: kMR*k floats of scratch for the last, partial micro-panel. `tr`: the rounding of the
// tile's element (0, 0) (used when kStochastic).
template <class D, bool kOverwrite, bool kStochastic>
static void update_tile(typename D::Storage* w, int64_t ldw, int64_t rows, int64_t cols,
                        const float* left, int64_t k, const float* bpack, float* apack,
                        float decay, const TileRounding& tr) {
  for (int64_t ir = 0; ir < rows; ir += kMR) {
    const int64_t mr = std::min<int64_t>(kMR, rows - ir);
    // Full panels read L in place (kMR row streams); the last, partial one is zero-padded.
    const float* ap = left + ir * k;
    int64_t a_rs = k, a_cs = 1;
    if (mr < kMR) {
      pack_left(left, k, ir, mr, apack);
      ap = apack, a_rs = 1, a_cs = kMR;
    }
    typename D::Storage* wrow = w + ir * ldw;
    for (int64_t jr = 0; jr < cols; jr += kNR) {
      VF acc[kMR][kNV];
      if (!kOverwrite && jr + kNR < cols)  // the next W tile, read in the next epilogue
        for (int i = 0; i < kMR; ++i) __builtin_prefetch(wrow + i * ldw + jr + kNR, 1, 3);
      micro_kernel(k, ap, a_rs, a_cs, bpack + jr * k, acc);
      store_tile<D, kOverwrite, kStochastic>(wrow + jr, ldw, mr, std::min<int64_t>(kNR, cols - jr),
                                             decay, acc, tr.at(ir, jr));
    }
  }
}

// Columns of a W tile for inner size k: the packed R panel stays in L2.
static int64_t tile_cols(int64_t k) {
  const int64_t nb = kPanelBytes / (static_cast<int64_t>(sizeof(float)) * k) / kNR * kNR;
  return std::min<int64_t>(std::max<int64_t>(nb, kNR), kMaxTileCols);
}

// A narrower tile width, while there are fewer than 4 tiles per thread (false at kNR).
static bool narrow_tiles(int64_t& nb) {
  if (nb <= kNR) return false;
  nb = std::max<int64_t>(kNR, (nb / 2 + kNR - 1) / kNR * kNR);
  return true;
}

template <class D, bool kOverwrite, bool kStochastic>
static void lowrank_typed(typename D::Storage* w, int64_t m, int64_t n, const float* left,
                          const float* right, int64_t k, float decay, const TileRounding& tr,
                          int num_threads) {
  int64_t nb = tile_cols(k);
  const int64_t tiles_m = (m + kTileRows - 1) / kTileRows;
  int64_t tiles_n = (n + nb - 1) / nb;
  int threads = num_threads < 1 ? 1 : num_threads;
  if (m * n * k < (int64_t{1} << 20)) threads = 1;  // too small to pay for a parallel region
  // Narrower tiles when there are too few to share out (the grid does not change any sum).
  while (tiles_m * tiles_n < 4 * threads && narrow_tiles(nb)) tiles_n = (n + nb - 1) / nb;
  const int64_t tiles = tiles_m * tiles_n;
  if (threads > tiles) threads = static_cast<int>(tiles);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    FloatBuffer bpack((nb + kNR) * k), apack(kMR * k);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = (t / tiles_n) * kTileRows, c0 = (t % tiles_n) * nb;
      const int64_t rows = std::min(kTileRows, m - r0), cols = std::min(nb, n - c0);
      pack_right(right, k, c0, cols, bpack.p);
      update_tile<D, kOverwrite, kStochastic>(w + r0 * n + c0, n, rows, cols, left + r0 * k, k,
                                              bpack.p, apack.p, decay, tr.at(r0, c0));
    }
  }
}

// Calls f(kOverwrite, kStochastic) as std::integral_constant<bool, ...> values: overwrite when
// decay == 0, stochastic rounding when asked for and D is a 16-bit type.
template <class D, class F>
static void with_store_flags(float decay, bool stochastic, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  if constexpr (!std::is_same<D, F32>::value) {
    if (stochastic) {
      if (decay == 0.0f) f(T{}, T{}); else f(N{}, T{});
      return;
    }
  }
  if (decay == 0.0f) f(T{}, N{}); else f(N{}, N{});
}

template <class D>
static void lowrank_dispatch(void* w, int64_t m, int64_t n, const float* left, const float* right,
                             int64_t k, float decay, const RoundingArgs& rounding, uint32_t key,
                             uint64_t index, int num_threads) {
  auto* wt = static_cast<typename D::Storage*>(w);
  const TileRounding tr{rounding.stochastic ? rounding_base(rounding.seed, key) : 0u, index, n};
  with_store_flags<D>(decay, rounding.stochastic, [&](auto overwrite, auto stochastic) {
    lowrank_typed<D, decltype(overwrite)::value, decltype(stochastic)::value>(
        wt, m, n, left, right, k, decay, tr, num_threads);
  });
}

void lowrank_update(DType dtype, void* w, int64_t m, int64_t n, const float* left,
                    const float* right, int64_t k, float decay, const RoundingArgs& rounding,
                    uint32_t key, uint64_t index, int num_threads) {
  if (m <= 0 || n <= 0) return;
  switch (dtype) {
    case DType::kFloat32:
      lowrank_dispatch<F32>(w, m, n, left, right, k, decay, rounding, key, index, num_threads);
      break;
    case DType::kBFloat16:
      lowrank_dispatch<BF16>(w, m, n, left, right, k, decay, rounding, key, index, num_threads);
      break;
    case DType::kFloat16:
      lowrank_dispatch<F16>(w, m, n, left, right, k, decay, rounding, key, index, num_threads);
      break;
  }
}

// ---- gaussian_sketch -----------------------------------------------------------------------

constexpr int64_t kSketchRows = 4 * kMR;   // rows of A per block (transpose == false)
constexpr int64_t kSketchCols = 1024;      // columns of A per generated tile (transpose == false)
constexpr int64_t kSketchTRows = 48;       // rows of A per generated tile (transpose == true)
constexpr int64_t kSketchTCols = 384;      // columns of A per block (transpose == true), % kMR == 0
constexpr int64_t kTileLead = 4;   // writable floats before a tile row (stream_sum's shift)
constexpr int64_t kTilePad = kTileLead + 36;  // per tile row: kTileLead before, 36 after
static_assert(kSketchTCols % kMR == 0, "column blocks must hold whole micro-panels");
static_assert(kSketchCols + 32 <= kHostChunk && kSketchTCols + 32 <= kHostChunk,
              "stream_sum limit");

// tile_row[l] = A[a, b0 + l] for l in [0, len); writes up to kTileLead floats before tile_row
// and 36 after tile_row + len. With kWhole, the Philox blocks drawn are rounded up to a whole
// number of 8-block AVX2 groups (extra stream values past len, not used, instead of a slow
// scalar tail: worth it for short rows).
template <bool kWhole>
static inline void draw_row(const StreamArgs& sa, uint32_t key, uint64_t offset, int64_t n,
                            int64_t a, int64_t b0, int64_t len, float* tile_row) {
  const uint64_t g = offset + static_cast<uint64_t>(a * n + b0);
  const int64_t shift = static_cast<int64_t>(g & 3u);
  if (kWhole) {
    const int64_t nb = (shift + len + 3) / 4;
    len = (nb + 7) / 8 * 32 - shift;
  }
  stream_sum(sa, key, g, len, tile_row - shift);
}

// c[i][0, kNR) += acc[i] for i < kMR (c has row stride ldc).
static inline __attribute__((always_inline)) void add_tile(float* __restrict c, int64_t ldc,
                                                           VF (&acc)[kMR][kNV]) {
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v)
      vstore(c + i * ldc + v * kVW, vadd(vload(c + i * ldc + v * kVW), acc[i][v]));
}

void gaussian_sketch(int64_t m, int64_t n, uint64_t offset, uint32_t key, const uint64_t* seeds,
                     const float* coeffs, int64_t n_seeds, const float* omega, int64_t q,
                     bool transpose, float* out, int num_threads) {
  const int64_t out_rows = transpose ? n : m, inner = transpose ? m : n;
  if (out_rows <= 0 || q <= 0) return;
  if (inner <= 0) {
    std::fill(out, out + out_rows * q, 0.0f);
    return;
  }
  const StreamArgs sa{seeds, coeffs, n_seeds, 0.0f, 0.0f};
  const int64_t panels = (q + kNR - 1) / kNR, ldc = panels * kNR;
  // omega packed into kNR-column panels: opack[jp][row][kNR], zero past column q.
  FloatBuffer opack(panels * inner * kNR);
  const int64_t block = transpose ? kSketchTCols : kSketchRows;
  const int64_t blocks = (out_rows + block - 1) / block;
  int threads = num_threads < 1 ? 1 : num_threads;
  if (m * n < (int64_t{1} << 15)) threads = 1;
  if (threads > blocks) threads = static_cast<int>(blocks);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < inner; ++r)
      for (int64_t jp = 0; jp < panels; ++jp) {
        float* dst = opack.p + (jp * inner + r) * kNR;
        for (int64_t c = 0; c < kNR; ++c)
          dst[c] = jp * kNR + c < q ? omega[r * q + jp * kNR + c] : 0.0f;
      }
    // (implicit barrier: opack is complete)
    const int64_t tile_rows = transpose ? kSketchTRows : kSketchRows;
    const int64_t tile_cols = transpose ? kSketchTCols : kSketchCols;
    const int64_t ts = tile_cols + kTilePad;  // tile row stride; row i at kTileLead + i*ts
    FloatBuffer tile(tile_rows * ts), cbuf(block * ldc);
    float* const t0 = tile.p + kTileLead;
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t o0 = blk * block, rows = std::min(block, out_rows - o0);
      std::fill(cbuf.p, cbuf.p + block * ldc, 0.0f);
      if (!transpose) {
        // Output rows = rows [o0, o0 + rows) of A; inner dimension = columns of A.
        for (int64_t b0 = 0; b0 < n; b0 += kSketchCols) {
          const int64_t w = std::min(kSketchCols, n - b0);
          for (int64_t i = 0; i < rows; ++i) draw_row<false>(sa, key, offset, n, o0 + i, b0, w, t0 + i * ts);
          for (int64_t jp = 0; jp < panels; ++jp) {
            const float* bp = opack.p + (jp * inner + b0) * kNR;
            for (int64_t ir = 0; ir < rows; ir += kMR) {
              VF acc[kMR][kNV];
              micro_kernel(w, t0 + ir * ts, ts, 1, bp, acc);
              add_tile(cbuf.p + ir * ldc + jp * kNR, ldc, acc);
            }
          }
        }
      } else {
        // Output rows = columns [o0, o0 + rows) of A; inner dimension = rows of A.
        for (int64_t a0 = 0; a0 < m; a0 += kSketchTRows) {
          const int64_t h = std::min(kSketchTRows, m - a0);
          for (int64_t i = 0; i < h; ++i) draw_row<true>(sa, key, offset, n, a0 + i, o0, rows, t0 + i * ts);
          for (int64_t jp = 0; jp < panels; ++jp) {
            const float* bp = opack.p + (jp * inner + a0) * kNR;
            for (int64_t ir = 0; ir < rows; ir += kMR) {
              VF acc[kMR][kNV];
              micro_kernel(h, t0 + ir, 1, ts, bp, acc);
              add_tile(cbuf.p + ir * ldc + jp * kNR, ldc, acc);
            }
          }
        }
      }
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(out + (o0 + i) * q, cbuf.p + i * ldc, static_cast<size_t>(q) * sizeof(float));
    }
  }
}

}  // namespace PGAP_ISA_NS
}  // namespace host
}  // namespace pgap
