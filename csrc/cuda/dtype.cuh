// Device-side dtype helpers shared by the CUDA kernels: float32 loads/stores of W's dtypes with
// one round-to-nearest-even, and a 4-element vector for whole, aligned Philox blocks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pgap {
namespace cuda {

template <class T> struct Conv;
template <> struct Conv<float> {
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
};
template <> struct Conv<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
template <> struct Conv<__half> {
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float x) { return __float2half_rn(x); }
};

// Four consecutive elements, aligned for one 16-byte (fp32) or 8-byte (16-bit) access.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

}  // namespace cuda
}  // namespace pgap
