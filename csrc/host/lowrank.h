// Host (CPU) low-rank ops: in-place W <- decay*W + L*R^T and implicit Gaussian-sum sketches.
#pragma once
#include <cstdint>
#include <vector>

#include "pgap/perturb_args.h"

namespace pgap {
namespace host {

// W (m x n, row-major, `dtype`) <- decay*W + L*R^T in float32 with one rounding to `dtype`:
// to nearest, or stochastically (rounding.stochastic) with element (i, j) rounding under
// (rounding.seed, key) at element index `index` + i*n + j. L (m x k) and R (n x k) are
// row-major float32, k >= 1. decay == 0 overwrites W without reading it. Never allocates an
// m x n temporary.
void lowrank_update(DType dtype, void* w, int64_t m, int64_t n, const float* left,
                    const float* right, int64_t k, float decay, const RoundingArgs& rounding,
                    uint32_t key, uint64_t index, int num_threads);

// A[a, b] = sum_j coeffs[j] * xi(seeds[j], key, offset + a*n + b) (philox4x32-10/v1).
// transpose == false: out (m x q) <- A * omega, omega (n x q).
// transpose == true:  out (n x q) <- A^T * omega, omega (m x q).
// omega and out are row-major float32; out is overwritten. Tiles of A are generated on the fly.
void gaussian_sketch(int64_t m, int64_t n, uint64_t offset, uint32_t key, const uint64_t* seeds,
                     const float* coeffs, int64_t n_seeds, const float* omega, int64_t q,
                     bool transpose, float* out, int num_threads);

// One matrix of a subspace perturbation: W (m x n, row-major, `dtype`, mutated) and its basis V
// (n x r, row-major float32, r >= 1); Xi[i, k] = sum_j coeffs[j] * xi(seeds[j], key,
// offset + i*r + k). With stochastic rounding, W[i, j] rounds under (rounding seed, key) at
// element index rounding_index + i*n + j (rounding_index = offset / r * n: a row shard rounds
// like the rows of the whole matrix).
struct SubspaceMatrix {
  DType dtype;
  void* w;
  const float* basis;
  int64_t m, n, r;
  uint64_t offset;
  uint32_t key;
  uint64_t rounding_index;
};

// W <- decay*W + Xi*V^T for every matrix, float32 accumulation and one rounding to W's dtype
// (stream.decay and stream.rounding; stream.mean_coeff is unused). decay == 0 overwrites W
// without reading it. One parallel region for all matrices; Xi is drawn in row blocks, never
// stored whole, and nothing m x n is allocated.
void subspace_perturb(const std::vector<SubspaceMatrix>& mats, const StreamArgs& stream,
                      int num_threads);

}  // namespace host
}  // namespace pgap
