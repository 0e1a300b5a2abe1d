// Device-side helpers shared by the CUDA kernels: float32 loads/stores of W's dtypes with one
// round-to-nearest-even or stochastic rounding (pgap/rounding.h), the seeded sum of one Philox
// block's normals, a 4-element vector for whole, aligned Philox blocks, and the lookup of a work
// item's tensor in a multi-tensor table.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "pgap/normal.h"
#include "pgap/rounding.h"

namespace pgap {
namespace cuda {

// stochastic(v, x): v rounded stochastically to T's grid with rounding word x, as a float32
// value that store() then writes unchanged (float32 keeps v).
template <class T> struct Conv;
template <> struct Conv<float> {
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
  __device__ static float stochastic(float v, uint32_t) { return v; }
};
template <> struct Conv<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
  __device__ static float stochastic(float v, uint32_t x) { return round_stochastic_bf16(v, x); }
};
template <> struct Conv<__half> {
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float x) { return __float2half_rn(x); }
  __device__ static float stochastic(float v, uint32_t x) { return round_stochastic_f16(v, x); }
};

// v stored as T: rounded to nearest, or (kStochastic) stochastically with rounding word x.
template <class T, bool kStochastic>
__device__ __forceinline__ T round_store(float v, uint32_t x) {
  return Conv<T>::store(kStochastic ? Conv<T>::stochastic(v, x) : v);
}

// kStochastic is only instantiated for the 16-bit types (float32 results are stored as they are).
template <class T>
constexpr bool kHasStochastic = !std::is_same<T, float>::value;

// Largest p in [0, n) with meta[p].*kBegin <= id, for a table sorted by its kBegin column (the
// first work item of each tensor): which tensor work item `id` belongs to.
template <class Meta, int64_t Meta::*kBegin>
__device__ __forceinline__ int64_t find_owner(const Meta* meta, int64_t n, int64_t id) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (meta[mid].*kBegin <= id) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// z[lane] = sum_j coeffs[j] * xi(seeds[j], key, 4*block + lane) for lane = 0..3, added in seed
// order from 0: the expressions of perturb_ and of the host kernels, so (built with
// --fmad=false) the same bits.
__device__ __forceinline__ void seeded_block_sum(const uint64_t* __restrict__ seeds,
                                                 const float* __restrict__ coeffs, int64_t n_seeds,
                                                 uint32_t key, uint64_t block, float (&z)[4]) {
  z[0] = z[1] = z[2] = z[3] = 0.0f;
  for (int64_t j = 0; j < n_seeds; ++j) {
    const Normals4 x = stream_block_normals(seeds[j], key, block);
    const float c = coeffs[j];
    z[0] += c * x.z0;
    z[1] += c * x.z1;
    z[2] += c * x.z2;
    z[3] += c * x.z3;
  }
}

// Four consecutive elements, aligned for one 16-byte (fp32) or 8-byte (16-bit) access.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

}  // namespace cuda
}  // namespace pgap
