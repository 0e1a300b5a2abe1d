// Body of the host perturbation kernel, compiled once per instruction set.
//
// Included by perturb_<isa>.cpp with PGAP_ISA_NS defined; each translation unit is built with
// its own -m flags, and host/perturb.cpp picks one at run time (no -march=native).
// Work is cut into chunks of kHostChunk elements; a chunk first draws its stream normals into
// a stack buffer (vectorized over Philox blocks), then streams the tensor once.
#pragma once
#include <cmath>
#include <cstdint>

#include "pgap/normal.h"
#include "host/perturb.h"
#include "host/philox_avx2.h"
#include "pgap/perturb_args.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including perturb_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// Philox words of stream blocks [b0, b0 + nb) for (seed, key), one array per output word.
static void philox_words(uint64_t seed, uint32_t key, uint64_t b0, int64_t nb,
                         uint32_t* __restrict w0, uint32_t* __restrict w1,
                         uint32_t* __restrict w2, uint32_t* __restrict w3) {
  int64_t j = 0;
#if defined(__AVX2__)
  j = philox_words_avx2(seed, key, b0, nb, w0, w1, w2, w3);
#endif
  for (; j < nb; ++j) {
    const Words4 w = stream_block_words(seed, key, b0 + static_cast<uint64_t>(j));
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
  philox_words(seed, key, b0, nb, w0, w1, w2, w3);
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

struct F32 {
  using Storage = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
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
};

struct F16 {
  using Storage = _Float16;
  static float load(_Float16 x) { return static_cast<float>(x); }
  static _Float16 store(float f) { return static_cast<_Float16>(f); }
};

template <class D, bool kHasMean, bool kOverwrite>
static void apply_chunk(typename D::Storage* __restrict t, const typename D::Storage* __restrict m,
                        const float* __restrict acc, int64_t n, float decay, float mean_coeff) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) {
    float base = kOverwrite ? 0.0f : decay * D::load(t[l]);
    if (kHasMean) base = base + mean_coeff * D::load(m[l]);
    t[l] = D::store(base + acc[l]);
  }
}

template <class D>
static void perturb_chunk_typed(const TensorArgs& ta, const StreamArgs& sa, int64_t lo,
                                int64_t hi) {
  alignas(64) float acc[kHostChunk + 8];
  const uint64_t g_lo = ta.offset + static_cast<uint64_t>(lo);
  const uint64_t g_hi = ta.offset + static_cast<uint64_t>(hi);  // exclusive
  const uint64_t b0 = g_lo >> 2;
  const int64_t nb = static_cast<int64_t>(((g_hi + 3) >> 2) - b0);
  const int64_t shift = static_cast<int64_t>(g_lo - (b0 << 2));
  if (sa.n_seeds == 0) {
    for (int64_t k = 0; k < 4 * nb; ++k) acc[k] = 0.0f;
  } else {
    accumulate_normals<true>(sa.seeds[0], ta.key, b0, nb, sa.coeffs[0], acc);
    for (int64_t j = 1; j < sa.n_seeds; ++j)
      accumulate_normals<false>(sa.seeds[j], ta.key, b0, nb, sa.coeffs[j], acc);
  }
  using S = typename D::Storage;
  S* t = static_cast<S*>(ta.data) + lo;
  const S* m = ta.mean ? static_cast<const S*>(ta.mean) + lo : nullptr;
  const int64_t n = hi - lo;
  const float* a = acc + shift;
  const bool overwrite = sa.decay == 0.0f;
  if (m) {
    if (overwrite) apply_chunk<D, true, true>(t, m, a, n, sa.decay, sa.mean_coeff);
    else apply_chunk<D, true, false>(t, m, a, n, sa.decay, sa.mean_coeff);
  } else {
    if (overwrite) apply_chunk<D, false, true>(t, m, a, n, sa.decay, sa.mean_coeff);
    else apply_chunk<D, false, false>(t, m, a, n, sa.decay, sa.mean_coeff);
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
