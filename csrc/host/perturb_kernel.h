// Body of the host perturbation kernel, compiled once per instruction set.
//
// Included by perturb_<isa>.cpp with PGAP_ISA_NS defined; each translation unit is built with
// its own -m flags, and host/perturb.cpp picks one at run time (no -march=native).
// Work is cut into chunks of kHostChunk elements; a chunk first draws its stream terms (normals,
// or Rademacher signs) into a stack buffer (vectorized over Philox blocks), then streams the
// tensor once. With stochastic rounding the AVX2/AVX-512 builds hash each row's rounding words
// in registers right before its store (host/simd_kernel.h); the generic build and the rows that
// do not fill a vector draw them into a stack buffer first. float16 and bfloat16 rounded to
// nearest are converted in explicit vectors there too; float32 loops vectorize as written.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "host/simd_kernel.h"
#include "host/stream_kernel.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including perturb_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// The float32 result decay*s + mean_coeff*m + acc of one element (T = float) or of a vector
// of them (T = VF), in one order of operations (no FMA: the file is built with
// -ffp-contract=off), so every build and path gives the same bits. s is not used when
// kOverwrite, nor m without kHasMean.
template <bool kHasMean, bool kOverwrite, class T>
static inline T combine(T s, T m, T acc, T decay, T mean_coeff, T zero) {
  T base = kOverwrite ? zero : decay * s;
  if (kHasMean) base = base + mean_coeff * m;
  return base + acc;
}

// t[l] <- decay*s[l] + mean_coeff*m[l] + acc[l], rounded to nearest or (kStochastic) with
// rounding word words[l]; t is stored as D, s and m are read as Src (D itself, or another dtype
// for an out-of-place copy that widens or narrows); s may be t itself (perturb_), so neither is
// __restrict (each element is read before it is written, the same index: omp simd is safe).
template <class D, class Src, bool kHasMean, bool kOverwrite, bool kStochastic>
static void apply_chunk(typename D::Storage* t, const typename Src::Storage* s,
                        const typename Src::Storage* __restrict m, const float* __restrict acc,
                        const uint16_t* __restrict words, int64_t n, float decay,
                        float mean_coeff) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) {
    const float v = combine<kHasMean, kOverwrite>(kOverwrite ? 0.0f : Src::load(s[l]),
                                                  kHasMean ? Src::load(m[l]) : 0.0f, acc[l], decay,
                                                  mean_coeff, 0.0f);
    t[l] = kStochastic ? D::store_stochastic(v, words[l]) : D::store(v);
  }
}

#if defined(__AVX2__) || defined(__AVX512F__)
// combine() of the kVW elements from k, loaded from D's storage (vload_w) as one vector.
template <bool kHasMean, bool kOverwrite, class S>
static inline VF combine_vector(const S* s, const S* m, const float* acc, int64_t k, VF decay,
                                VF mean_coeff) {
  const VF zero = vzero();
  VF sv = zero, mv = zero;
  if constexpr (!kOverwrite) sv = vload_w(s + k);
  if constexpr (kHasMean) mv = vload_w(m + k);
  return combine<kHasMean, kOverwrite>(sv, mv, vload(acc + k), decay, mean_coeff, zero);
}
#endif

// apply_chunk rounded to nearest. AVX2/AVX-512, float16 and bfloat16 (as D or Src): vectors of
// kVW elements converted by vload_w/vstore_w, then the scalar rest. float16: F16C
// vcvtph2ps/vcvtps2ph, round to nearest even, the bits of F16::load and F16::store (which GCC
// compiles there to the same instructions one element at a time, but does not vectorize).
// bfloat16: bf16_nearest_bits, the bits of BF16::store (NaN kept quiet), 3-4 % faster than GCC's
// vectorization of the scalar loop (docs/results.md). float32 to float32 (its scalar loop
// vectorizes) and the generic build take apply_chunk.
template <class D, class Src, bool kHasMean, bool kOverwrite>
static void apply_chunk_nearest(typename D::Storage* t, const typename Src::Storage* s,
                                const typename Src::Storage* m, const float* acc, int64_t n,
                                float decay, float mean_coeff) {
  int64_t l = 0;
#if defined(__AVX2__) || defined(__AVX512F__)
  if constexpr (!(std::is_same<D, F32>::value && std::is_same<Src, F32>::value)) {
    const VF vd = vbcast(decay), vc = vbcast(mean_coeff);
#pragma GCC unroll 2
    for (; l + kVW <= n; l += kVW)
      vstore_w(t + l, combine_vector<kHasMean, kOverwrite>(s, m, acc, l, vd, vc));
  }
#endif
  apply_chunk<D, Src, kHasMean, kOverwrite, false>(t + l, s + l, kHasMean ? m + l : nullptr,
                                                   acc + l, nullptr, n - l, decay, mean_coeff);
}

// apply_chunk with stochastic rounding: element l rounds with the word of rounding index g + l
// under the hash state `base` (pgap/rounding.h). AVX2/AVX-512: a few elements up to an index
// that is a multiple of 4, then rows of kNR elements, each hashing its words into a register
// and storing through store_row_stochastic, then the rest; the head and the rest (the generic
// build: everything) take the scalar loop with words from rounding_words.
template <class D, bool kHasMean, bool kOverwrite>
static void apply_chunk_stochastic(typename D::Storage* t, const typename D::Storage* s,
                                   const typename D::Storage* m, const float* acc, uint64_t base,
                                   uint64_t g, int64_t n, float decay, float mean_coeff) {
  alignas(64) uint16_t words[kHostChunk + 8];
  const auto scalar = [&](int64_t lo, int64_t hi) {  // elements [lo, hi), hi - lo <= kHostChunk
    if (hi <= lo) return;
    const int64_t shift = rounding_words(base, g + static_cast<uint64_t>(lo), hi - lo, words);
    apply_chunk<D, D, kHasMean, kOverwrite, true>(t + lo, s + lo, kHasMean ? m + lo : nullptr,
                                                  acc + lo, words + shift, hi - lo, decay,
                                                  mean_coeff);
  };
  int64_t l = 0;
#if defined(__AVX2__) || defined(__AVX512F__)
  l = std::min<int64_t>(n, static_cast<int64_t>((0u - g) & 3u));  // to a block of 4 words
  scalar(0, l);
  if (l + kNR <= n) {
    RowWordStream row_words(base, g + static_cast<uint64_t>(l));
    const VF vd = vbcast(decay), vc = vbcast(mean_coeff);
    for (; l + kNR <= n; l += kNR) {
      VF x[kNV];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v)
        x[v] = combine_vector<kHasMean, kOverwrite>(s, m, acc, l + v * kVW, vd, vc);
      store_row_stochastic(t + l, x, row_words.next());
    }
  }
#endif
  scalar(l, n);
}

// Stochastic rounding only in place (Src == D): out-of-place copies round to nearest.
template <class D, class Src, bool kStochastic>
static void apply_chunk_for(typename D::Storage* t, const typename Src::Storage* s,
                            const typename Src::Storage* m, const float* acc, uint64_t base,
                            uint64_t g, int64_t n, const StreamArgs& sa) {
  static_assert(!kStochastic || std::is_same<D, Src>::value, "stochastic rounding in place only");
  const float d = sa.decay, c = sa.mean_coeff;
  const auto apply = [&](auto has_mean, auto overwrite) {
    constexpr bool kHasMean = decltype(has_mean)::value, kOverwrite = decltype(overwrite)::value;
    if constexpr (kStochastic)
      apply_chunk_stochastic<D, kHasMean, kOverwrite>(t, s, m, acc, base, g, n, d, c);
    else
      apply_chunk_nearest<D, Src, kHasMean, kOverwrite>(t, s, m, acc, n, d, c);
  };
  using Yes = std::true_type;
  using No = std::false_type;
  const bool overwrite = sa.decay == 0.0f;
  if (m) {
    if (overwrite) apply(Yes{}, Yes{});
    else apply(Yes{}, No{});
  } else {
    if (overwrite) apply(No{}, Yes{});
    else apply(No{}, No{});
  }
}

// D: the written tensor's storage type; Src: the one of the source and mean (D in place).
template <class D, class Src>
static void perturb_chunk_typed(const TensorArgs& ta, const StreamArgs& sa, int64_t lo,
                                int64_t hi) {
  alignas(64) float acc[kHostAccFloats];
  const uint64_t g_lo = ta.offset + static_cast<uint64_t>(lo);
  const int64_t shift = sa.distribution == Distribution::kRademacher
                            ? rademacher_sum(sa, ta.key, g_lo, hi - lo, acc)
                            : stream_sum(sa, ta.key, g_lo, hi - lo, acc);
  using T = typename D::Storage;
  using S = typename Src::Storage;
  T* t = static_cast<T*>(ta.data) + lo;
  const S* s = static_cast<const S*>(ta.src) + lo;
  const S* m = ta.mean ? static_cast<const S*>(ta.mean) + lo : nullptr;
  if constexpr (!std::is_same<D, F32>::value && std::is_same<D, Src>::value) {
    if (sa.rounding.stochastic) {  // the rounding words of the same element indices
      apply_chunk_for<D, D, true>(t, s, m, acc + shift, rounding_base(sa.rounding.seed, ta.key),
                                  g_lo, hi - lo, sa);
      return;
    }
  }
  apply_chunk_for<D, Src, false>(t, s, m, acc + shift, 0u, g_lo, hi - lo, sa);
  if (ta.minus) {  // the same chunk with every coefficient negated: -(c*x) and -(a + b) are exact
    float* a = acc + shift;
#pragma omp simd
    for (int64_t l = 0; l < hi - lo; ++l) a[l] = -a[l];
    StreamArgs negated = sa;
    negated.mean_coeff = -sa.mean_coeff;
    apply_chunk_for<D, Src, false>(static_cast<T*>(ta.minus) + lo, s, m, a, 0u, g_lo, hi - lo,
                                   negated);
  }
}

template <class D>
static void perturb_chunk_from(DType src_dtype, const TensorArgs& ta, const StreamArgs& sa,
                               int64_t lo, int64_t hi) {
  switch (src_dtype) {
    case DType::kFloat32: perturb_chunk_typed<D, F32>(ta, sa, lo, hi); break;
    case DType::kBFloat16: perturb_chunk_typed<D, BF16>(ta, sa, lo, hi); break;
    case DType::kFloat16: perturb_chunk_typed<D, F16>(ta, sa, lo, hi); break;
  }
}

// Elements [lo, hi) of one tensor, hi - lo <= kHostChunk: written as dtype, read as src_dtype.
void perturb_chunk(DType dtype, DType src_dtype, const TensorArgs& ta, const StreamArgs& sa,
                   int64_t lo, int64_t hi) {
  switch (dtype) {
    case DType::kFloat32: perturb_chunk_from<F32>(src_dtype, ta, sa, lo, hi); break;
    case DType::kBFloat16: perturb_chunk_from<BF16>(src_dtype, ta, sa, lo, hi); break;
    case DType::kFloat16: perturb_chunk_from<F16>(src_dtype, ta, sa, lo, hi); break;
  }
}

}  // namespace PGAP_ISA_NS
}  // namespace host
}  // namespace pgap
