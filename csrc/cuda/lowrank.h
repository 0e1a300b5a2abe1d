// CUDA low-rank ops: batched in-place W <- decay*W + L*R^T and implicit Gaussian-sum sketches.
#pragma once
#include <cstdint>

#include "pgap/perturb_args.h"

namespace pgap {
namespace cuda {

// For each of `count` same-shape problems p (pointer arrays are device arrays of int64 holding
// device pointers): W_p (m x n, row-major, `dtype`) <- decay*W_p + L_p*R_p^T, float32
// accumulation, one rounding: to nearest, or (stochastic) W_p[i, j] with the rounding word of
// element indices[p] + i*n + j under (rounding_seed, keys[p]) (pgap/rounding.h; keys, indices:
// device int64 arrays, read only when stochastic). L_p (m x k), R_p (n x k): row-major float32,
// k >= 1. decay == 0 overwrites W_p without reading it. Runs on `stream` of `device`.
void lowrank_update(DType dtype, const int64_t* w_ptrs, const int64_t* left_ptrs,
                    const int64_t* right_ptrs, int64_t count, int64_t m, int64_t n, int64_t k,
                    float decay, const int64_t* keys, const int64_t* indices, bool stochastic,
                    uint64_t rounding_seed, int device, void* stream);

// For each of `count` problems p sharing (m, n, q), seeds and coeffs (device arrays), with
// keys[p], offsets[p] (device int64 arrays) and A_p[a, b] = sum_j coeffs[j] *
// xi(seeds[j], keys[p], offsets[p] + a*n + b):
// transpose == false: out_p (m x q) <- A_p * omega_p, omega_p (n x q);
// transpose == true:  out_p (n x q) <- A_p^T * omega_p, omega_p (m x q).
// omega_ptrs/out_ptrs: device int64 arrays of device pointers to row-major float32 matrices;
// out_p is overwritten. Tiles of A_p are generated in the kernel, never stored in global memory.
void gaussian_sketch(const int64_t* keys, const int64_t* offsets, const int64_t* omega_ptrs,
                     const int64_t* out_ptrs, int64_t count, int64_t m, int64_t n, int64_t q,
                     const uint64_t* seeds, const float* coeffs, int64_t n_seeds, bool transpose,
                     int device, void* stream);

}  // namespace cuda
}  // namespace pgap
