// CUDA fused perturbation: one launch for a whole dtype group of tensors.
#pragma once
#include <cstdint>

#include "pgap/perturb_args.h"
#include "pgap/rademacher.h"

namespace pgap {
namespace cuda {

// Per-tensor metadata as laid out in the int64 device table built by the Python layer.
struct TensorMeta {
  int64_t data;         // device pointer (written)
  int64_t mean;         // device pointer or 0
  int64_t numel;
  int64_t offset;       // stream index of element 0 (< 2^63)
  int64_t key;          // < 2^32
  int64_t chunk_begin;  // first chunk id of this tensor (prefix sum of chunk counts)
  int64_t src;          // device pointer read for the decay term: data (in place) or disjoint
};

constexpr int kThreads = 256;
// Philox blocks per chunk (one CTA): 4096 elements, four blocks per thread, so that the per-thread
// set-up (the tensor lookup, its metadata, the index arithmetic) is paid once per 16 elements
// instead of per 4: on an H200 the kernel is bound by issued instructions (ncu: 82 % issue slots
// busy, 97 instructions per element with one block per thread).
constexpr int kBlocksPerThread = 4;
constexpr int64_t kChunkBlocks = static_cast<int64_t>(kThreads) * kBlocksPerThread;
// The Rademacher stream (pgap/rademacher.h): a chunk is 8 Rademacher blocks of 128 elements per
// warp (kRademacherWarpBlocks), 8192 elements per CTA; its table counts 128-element blocks.
constexpr int64_t kRademacherChunkBlocks = static_cast<int64_t>(kThreads / 32) * kRademacherWarpBlocks;

// meta, seeds, coeffs: device pointers; total_chunks = sum over tensors of
// ceil(block span / kChunkBlocks), the span counted in 4-element Philox blocks for the Gaussian
// stream, or ceil(span / kRademacherChunkBlocks) in 128-element blocks for the Rademacher stream
// (see pgap_kernels/backends/cuda/perturb.py). With `stochastic`, 16-bit results round
// stochastically: element l of a tensor with the rounding word of element offset + l under
// (rounding_seed, key) (pgap/rounding.h).
// src_dtype: the sources' and means' dtype (dtype in place; another one only for out-of-place
// copies, decay 1, rounded to nearest).
void perturb(DType dtype, DType src_dtype, const TensorMeta* meta, int64_t n_tensors,
             int64_t total_chunks, const uint64_t* seeds, const float* coeffs, int64_t n_seeds,
             float decay, float mean_coeff, bool has_mean, bool stochastic, uint64_t rounding_seed,
             Distribution distribution, int device, void* stream);

}  // namespace cuda
}  // namespace pgap
