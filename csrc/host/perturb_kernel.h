// Body of the host perturbation kernel, compiled once per instruction set.
//
// Included by perturb_<isa>.cpp with PGAP_ISA_NS defined; each translation unit is built with
// its own -m flags, and host/perturb.cpp picks one at run time (no -march=native).
// Work is cut into chunks of kHostChunk elements; a chunk first draws its stream normals into
// a stack buffer (vectorized over Philox blocks), then streams the tensor once.
#pragma once
#include <cstdint>

#include "host/stream_kernel.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including perturb_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// t[l] <- decay*s[l] + mean_coeff*m[l] + acc[l]; s may be t itself (perturb_), so neither is
// __restrict (each element is read before it is written, the same index: omp simd is safe).
template <class D, bool kHasMean, bool kOverwrite>
static void apply_chunk(typename D::Storage* t, const typename D::Storage* s,
                        const typename D::Storage* __restrict m, const float* __restrict acc,
                        int64_t n, float decay, float mean_coeff) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) {
    float base = kOverwrite ? 0.0f : decay * D::load(s[l]);
    if (kHasMean) base = base + mean_coeff * D::load(m[l]);
    t[l] = D::store(base + acc[l]);
  }
}

template <class D>
static void perturb_chunk_typed(const TensorArgs& ta, const StreamArgs& sa, int64_t lo,
                                int64_t hi) {
  alignas(64) float acc[kHostChunk + 8];
  const int64_t shift = stream_sum(sa, ta.key, ta.offset + static_cast<uint64_t>(lo), hi - lo, acc);
  using S = typename D::Storage;
  S* t = static_cast<S*>(ta.data) + lo;
  const S* s = static_cast<const S*>(ta.src) + lo;
  const S* m = ta.mean ? static_cast<const S*>(ta.mean) + lo : nullptr;
  const int64_t n = hi - lo;
  const float* a = acc + shift;
  const bool overwrite = sa.decay == 0.0f;
  if (m) {
    if (overwrite) apply_chunk<D, true, true>(t, s, m, a, n, sa.decay, sa.mean_coeff);
    else apply_chunk<D, true, false>(t, s, m, a, n, sa.decay, sa.mean_coeff);
  } else {
    if (overwrite) apply_chunk<D, false, true>(t, s, m, a, n, sa.decay, sa.mean_coeff);
    else apply_chunk<D, false, false>(t, s, m, a, n, sa.decay, sa.mean_coeff);
  }
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
