// Body of the host perturbation kernel, compiled once per instruction set.
//
// Included by perturb_<isa>.cpp with PGAP_ISA_NS defined; each translation unit is built with
// its own -m flags, and host/perturb.cpp picks one at run time (no -march=native).
// Work is cut into chunks of kHostChunk elements; a chunk first draws its stream terms (normals,
// or Rademacher signs) into a stack buffer (vectorized over Philox blocks), then streams the
// tensor once.
#pragma once
#include <cstdint>
#include <type_traits>

#include "host/stream_kernel.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including perturb_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// t[l] <- decay*s[l] + mean_coeff*m[l] + acc[l], rounded to nearest or (kStochastic) with
// rounding word words[l]; s may be t itself (perturb_), so neither is __restrict (each element
// is read before it is written, the same index: omp simd is safe).
template <class D, bool kHasMean, bool kOverwrite, bool kStochastic>
static void apply_chunk(typename D::Storage* t, const typename D::Storage* s,
                        const typename D::Storage* __restrict m, const float* __restrict acc,
                        const uint16_t* __restrict words, int64_t n, float decay,
                        float mean_coeff) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) {
    float base = kOverwrite ? 0.0f : decay * D::load(s[l]);
    if (kHasMean) base = base + mean_coeff * D::load(m[l]);
    const float v = base + acc[l];
    t[l] = kStochastic ? D::store_stochastic(v, words[l]) : D::store(v);
  }
}

template <class D, bool kStochastic>
static void apply_chunk_for(typename D::Storage* t, const typename D::Storage* s,
                            const typename D::Storage* m, const float* acc, const uint16_t* words,
                            int64_t n, const StreamArgs& sa) {
  const bool overwrite = sa.decay == 0.0f;
  const float d = sa.decay, c = sa.mean_coeff;
  if (m) {
    if (overwrite) apply_chunk<D, true, true, kStochastic>(t, s, m, acc, words, n, d, c);
    else apply_chunk<D, true, false, kStochastic>(t, s, m, acc, words, n, d, c);
  } else {
    if (overwrite) apply_chunk<D, false, true, kStochastic>(t, s, m, acc, words, n, d, c);
    else apply_chunk<D, false, false, kStochastic>(t, s, m, acc, words, n, d, c);
  }
}

template <class D>
static void perturb_chunk_typed(const TensorArgs& ta, const StreamArgs& sa, int64_t lo,
                                int64_t hi) {
  alignas(64) float acc[kHostAccFloats];
  const uint64_t g_lo = ta.offset + static_cast<uint64_t>(lo);
  const int64_t shift = sa.distribution == Distribution::kRademacher
                            ? rademacher_sum(sa, ta.key, g_lo, hi - lo, acc)
                            : stream_sum(sa, ta.key, g_lo, hi - lo, acc);
  using S = typename D::Storage;
  S* t = static_cast<S*>(ta.data) + lo;
  const S* s = static_cast<const S*>(ta.src) + lo;
  const S* m = ta.mean ? static_cast<const S*>(ta.mean) + lo : nullptr;
  if constexpr (!std::is_same<D, F32>::value) {
    if (sa.rounding.stochastic) {  // the rounding words of the same element indices
      alignas(64) uint16_t words[kHostChunk + 8];
      const int64_t wshift =
          rounding_words(rounding_base(sa.rounding.seed, ta.key), g_lo, hi - lo, words);
      apply_chunk_for<D, true>(t, s, m, acc + shift, words + wshift, hi - lo, sa);
      return;
    }
  }
  apply_chunk_for<D, false>(t, s, m, acc + shift, nullptr, hi - lo, sa);
}

// Elements [lo, hi) of one tensor, hi - lo <= kHostChunk.
void perturb_chunk(DType dtype, const TensorArgs& ta, const StreamArgs& sa, int64_t lo,
                   int64_t hi) {
  switch (dtype) {
    case DType::kFloat32: perturb_chunk_typed<F32>(ta, sa, lo, hi); break;
    case DType::kBFloat16: perturb_chunk_typed<BF16>(ta, sa, lo, hi); break;
    case DType::kFloat16: perturb_chunk_typed<F16>(ta, sa, lo, hi); break;
  }
}

}  // namespace PGAP_ISA_NS
}  // namespace host
}  // namespace pgap
