// CUDA subspace perturbation: W_p <- decay*W_p + Xi_p*V_p^T for many matrices in one launch.
#pragma once
#include <cstdint>

#include "pgap/perturb_args.h"

namespace pgap {
namespace cuda {

// CTA tile: kSubspaceRows rows x (span * kSubspaceCols) columns of one W; the inner dimension r
// is walked kSubspaceRankStep at a time.
constexpr int64_t kSubspaceRows = 64;
constexpr int64_t kSubspaceCols = 128;
constexpr int64_t kSubspaceRankStep = 32;

// Per-matrix row of the int64 device table built by the Python layer
// (pgap_kernels/backends/_tables.py: subspace_table).
struct SubspaceMeta {
  int64_t w;           // device pointer: W, m x n row-major, the launch's dtype (mutated)
  int64_t basis;       // device pointer: V, n x r row-major float32
  int64_t m, n, r;     // r >= 1
  int64_t offset;      // stream index of Xi[0, 0]; Xi[i, k] is at offset + i*r + k
  int64_t key;         // < 2^32
  int64_t tile_begin;  // first tile id of this matrix (prefix sum of tile counts)
  int64_t col_spans;   // tiles per row block: ceil(ceil(n / kSubspaceCols) / span)
  int64_t rounding_index;  // stochastic rounding: W[i, j] rounds at element rounding_index + i*n + j
};

// For every matrix of `meta` (device table, `count` rows, all W of `dtype`, total_tiles =
// sum of ceil(m / kSubspaceRows) * col_spans): W <- decay*W + Xi*V^T with
// Xi[i, k] = sum_j coeffs[j] * xi(seeds[j], key, offset + i*r + k), float32 accumulation and
// one rounding: to nearest, or (stochastic) with the rounding words of (rounding_seed, key) at
// W's rounding_index + i*n + j (pgap/rounding.h). decay == 0 overwrites W without reading it.
// Xi is generated in shared memory, never written to global memory. seeds, coeffs: device
// arrays. Runs on `stream` of `device`.
void subspace_perturb(DType dtype, const SubspaceMeta* meta, int64_t count, int64_t total_tiles,
                      int64_t span, const uint64_t* seeds, const float* coeffs, int64_t n_seeds,
                      float decay, bool stochastic, uint64_t rounding_seed, int device,
                      void* stream);

}  // namespace cuda
}  // namespace pgap
