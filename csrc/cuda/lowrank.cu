// CUDA low-rank ops, portable version: one thread per output element.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/lowrank.h"
#include "pgap/normal.h"

namespace pgap {
namespace cuda {
namespace {

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

constexpr int kTile = 16;

template <class T>
__global__ void lowrank_kernel(const int64_t* w_ptrs, const int64_t* left_ptrs,
                               const int64_t* right_ptrs, int64_t m, int64_t n, int64_t k,
                               float decay) {
  const int64_t a = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (a >= m || b >= n) return;
  T* w = reinterpret_cast<T*>(w_ptrs[blockIdx.z]);
  const float* l = reinterpret_cast<const float*>(left_ptrs[blockIdx.z]) + a * k;
  const float* r = reinterpret_cast<const float*>(right_ptrs[blockIdx.z]) + b * k;
  float acc = 0.0f;
  for (int64_t t = 0; t < k; ++t) acc += l[t] * r[t];
  const float base = decay == 0.0f ? 0.0f : decay * Conv<T>::load(w[a * n + b]);
  w[a * n + b] = Conv<T>::store(base + acc);
}

__device__ float sum_element(const uint64_t* seeds, const float* coeffs, int64_t n_seeds,
                             uint32_t key, uint64_t index) {
  float acc = 0.0f;
  for (int64_t j = 0; j < n_seeds; ++j) {
    const Normals4 z = stream_block_normals(seeds[j], key, index >> 2);
    const int lane = static_cast<int>(index & 3);
    const float v = lane == 0 ? z.z0 : lane == 1 ? z.z1 : lane == 2 ? z.z2 : z.z3;
    acc += coeffs[j] * v;
  }
  return acc;
}

__global__ void sketch_kernel(const int64_t* keys, const int64_t* offsets, const int64_t* omega_ptrs,
                              const int64_t* out_ptrs, int64_t m, int64_t n, int64_t q,
                              const uint64_t* seeds, const float* coeffs, int64_t n_seeds,
                              bool transpose) {
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y;  // output row
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  const int64_t rows = transpose ? n : m, inner = transpose ? m : n;
  if (row >= rows || c >= q) return;
  const uint32_t key = static_cast<uint32_t>(keys[blockIdx.z]);
  const uint64_t offset = static_cast<uint64_t>(offsets[blockIdx.z]);
  const float* omega = reinterpret_cast<const float*>(omega_ptrs[blockIdx.z]);
  float acc = 0.0f;
  for (int64_t i = 0; i < inner; ++i) {
    const int64_t a = transpose ? i : row, b = transpose ? row : i;
    acc += sum_element(seeds, coeffs, n_seeds, key, offset + static_cast<uint64_t>(a * n + b)) *
           omega[i * q + c];
  }
  reinterpret_cast<float*>(out_ptrs[blockIdx.z])[row * q + c] = acc;
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("pgap ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace

void lowrank_update(DType dtype, const int64_t* w_ptrs, const int64_t* left_ptrs,
                    const int64_t* right_ptrs, int64_t count, int64_t m, int64_t n, int64_t k,
                    float decay, int device, void* stream) {
  if (count == 0 || m == 0 || n == 0) return;
  check(cudaSetDevice(device), "lowrank_update: cudaSetDevice");
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile),
                  static_cast<unsigned>((m + kTile - 1) / kTile), static_cast<unsigned>(count));
  const dim3 block(kTile, kTile);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32:
      lowrank_kernel<float><<<grid, block, 0, s>>>(w_ptrs, left_ptrs, right_ptrs, m, n, k, decay);
      break;
    case DType::kBFloat16:
      lowrank_kernel<__nv_bfloat16><<<grid, block, 0, s>>>(w_ptrs, left_ptrs, right_ptrs, m, n, k, decay);
      break;
    case DType::kFloat16:
      lowrank_kernel<__half><<<grid, block, 0, s>>>(w_ptrs, left_ptrs, right_ptrs, m, n, k, decay);
      break;
  }
  check(cudaGetLastError(), "lowrank_update launch");
}

void gaussian_sketch(const int64_t* keys, const int64_t* offsets, const int64_t* omega_ptrs,
                     const int64_t* out_ptrs, int64_t count, int64_t m, int64_t n, int64_t q,
                     const uint64_t* seeds, const float* coeffs, int64_t n_seeds, bool transpose,
                     int device, void* stream) {
  const int64_t rows = transpose ? n : m;
  if (count == 0 || rows == 0 || q == 0) return;
  check(cudaSetDevice(device), "gaussian_sketch: cudaSetDevice");
  const dim3 grid(static_cast<unsigned>((q + kTile - 1) / kTile),
                  static_cast<unsigned>((rows + kTile - 1) / kTile), static_cast<unsigned>(count));
  sketch_kernel<<<grid, dim3(kTile, kTile), 0, static_cast<cudaStream_t>(stream)>>>(
      keys, offsets, omega_ptrs, out_ptrs, m, n, q, seeds, coeffs, n_seeds, transpose);
  check(cudaGetLastError(), "gaussian_sketch launch");
}

}  // namespace cuda
}  // namespace pgap
