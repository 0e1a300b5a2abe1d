// Host (CPU) low-rank ops: in-place W <- decay*W + L*R^T and implicit Gaussian-sum sketches.
#pragma once
#include <cstdint>

#include "pgap/perturb_args.h"

namespace pgap {
namespace host {

// W (m x n, row-major, `dtype`) <- decay*W + L*R^T in float32 with one rounding to `dtype`.
// L (m x k) and R (n x k) are row-major float32, k >= 1. decay == 0 overwrites W without
// reading it. Never allocates an m x n temporary.
void lowrank_update(DType dtype, void* w, int64_t m, int64_t n, const float* left,
                    const float* right, int64_t k, float decay, int num_threads);

// A[a, b] = sum_j coeffs[j] * xi(seeds[j], key, offset + a*n + b) (philox4x32-10/v1).
// transpose == false: out (m x q) <- A * omega, omega (n x q).
// transpose == true:  out (n x q) <- A^T * omega, omega (m x q).
// omega and out are row-major float32; out is overwritten. Tiles of A are generated on the fly.
void gaussian_sketch(int64_t m, int64_t n, uint64_t offset, uint32_t key, const uint64_t* seeds,
                     const float* coeffs, int64_t n_seeds, const float* omega, int64_t q,
                     bool transpose, float* out, int num_threads);

}  // namespace host
}  // namespace pgap
