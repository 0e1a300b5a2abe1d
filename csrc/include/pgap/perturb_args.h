// Plain-old-data arguments of the fused perturbation, shared by the host and CUDA builds.
//
// For every tensor t with source s and element index l in [0, numel), in float32 with one
// rounding:
//   t[l] <- decay*s[l] + mean_coeff*mean[l] + sum_j coeffs[j] * xi(seeds[j], key, offset + l)
// with xi the Gaussian stream, or rho, the Rademacher stream (pgap/rademacher.h), in its place.
// s == t for perturb_ (in place); s is another tensor for the out-of-place perturbed. decay == 0
// writes t without reading s; a null mean drops the mean term. A non-null `minus` also receives
// the pass with the mean and stream coefficients negated (perturbed_many's out_minus).
#pragma once
#include <cstdint>

namespace pgap {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Which stream the seeded terms draw: xi (pgap/normal.h) or rho (pgap/rademacher.h).
enum class Distribution : int32_t { kGaussian = 0, kRademacher = 1 };

struct TensorArgs {
  void* data;          // contiguous, numel elements of the group's dtype (written)
  const void* src;     // read for the decay term: data itself, or a tensor disjoint from it
  const void* mean;    // null, or contiguous numel elements of the same dtype
  int64_t numel;
  uint64_t offset;     // stream index of element 0
  uint32_t key;
  // null, or contiguous numel elements of the dtype, disjoint from everything else (written):
  // the mirrored copy decay*s - mean_coeff*mean - sum_j coeffs[j] * xi(...), bit for bit what the
  // same pass with every coefficient negated writes to data (host builds; rounded to nearest)
  void* minus = nullptr;
};

// How results are rounded to a 16-bit dtype: to nearest even, or stochastically with the
// rounding words of `seed` (pgap/rounding.h; each op says which key and element index it uses).
// Float32 results are stored as they are either way.
struct RoundingArgs {
  bool stochastic;
  uint64_t seed;
};

struct StreamArgs {
  const uint64_t* seeds;
  const float* coeffs;
  int64_t n_seeds;
  float decay;
  float mean_coeff;
  RoundingArgs rounding;  // perturb_: element l of a tensor rounds with (key, offset + l)
  Distribution distribution = Distribution::kGaussian;
};

}  // namespace pgap
