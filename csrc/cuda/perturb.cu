// CUDA fused perturbation over the shared philox4x32-10/v1 device math (pgap/normal.h), or the
// Rademacher stream's (pgap/rademacher.h).
//
// Gaussian: a CUDA block handles one chunk of kChunkBlocks Philox blocks of one tensor; each
// thread draws the four normals of kBlocksPerThread Philox blocks in turn (all seeds) and updates
// their elements, reading the decay term from the tensor's source (the tensor itself for
// perturb_, another for perturbed). Rademacher: a CUDA block handles kRademacherChunkBlocks
// blocks of 128 elements, each warp 8 of them (see rademacher_kernel). Both update groups of
// four elements with the same code (apply_group).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/perturb.h"
#include "cuda/dtype.cuh"
#include "cuda/runtime.cuh"
#include "pgap/normal.h"
#include "pgap/rademacher.h"

namespace pgap {
namespace cuda {
namespace {

// Elements first .. first + 3 (local indices of the tensor; those outside [0, numel) are
// skipped) of one 4-aligned group of stream indices: t[l] <- decay*s[l] + mean_coeff*m[l] +
// acc[k], rounded to nearest or (kStochastic) with the group's rounding words rw; t is stored as
// T, s and m are read as S (T, or another type for an out-of-place copy into T). One vector
// load/store per operand when `aligned` (the tensor is, and first >= 0) and the group ends
// inside the tensor.
template <class T, class S, bool kHasMean, bool kOverwrite, bool kStochastic>
__device__ __forceinline__ void apply_group(T* t, const S* s, const S* m, int64_t first,
                                            int64_t numel, bool aligned, const float (&acc)[4],
                                            const Words4& rw, float decay, float mean_coeff) {
  if (aligned && first + 3 < numel) {
    Vec4<S> sv;
    if (!kOverwrite) sv = *reinterpret_cast<const Vec4<S>*>(s + first);
    Vec4<S> mv;
    if (kHasMean) mv = *reinterpret_cast<const Vec4<S>*>(m + first);
    Vec4<T> out;
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      float base = kOverwrite ? 0.0f : decay * Conv<S>::load(sv.v[lane]);
      if (kHasMean) base = base + mean_coeff * Conv<S>::load(mv.v[lane]);
      out.v[lane] = round_store<T, kStochastic>(base + acc[lane], word_of_lane(rw, lane));
    }
    *reinterpret_cast<Vec4<T>*>(t + first) = out;
    return;
  }
#pragma unroll
  for (int lane = 0; lane < 4; ++lane) {
    const int64_t l = first + lane;
    if (l < 0 || l >= numel) continue;
    float base = kOverwrite ? 0.0f : decay * Conv<S>::load(s[l]);
    if (kHasMean) base = base + mean_coeff * Conv<S>::load(m[l]);
    t[l] = round_store<T, kStochastic>(base + acc[lane], word_of_lane(rw, lane));
  }
}

// The tensor of a chunk, as the kernels read it: written as T, its source and mean read as S.
template <class T, class S>
struct ChunkTensor {
  T* t;
  const S* s;  // == t in place (then S == T)
  const S* m;
  int64_t numel;
  uint64_t offset;
  uint32_t key;
  bool aligned;  // offset % 4 == 0 and every operand aligned for one vector access per group
};

template <class T, class S, bool kHasMean, bool kOverwrite>
__device__ __forceinline__ ChunkTensor<T, S> chunk_tensor(const TensorMeta& tm) {
  constexpr int64_t kVecBytes = 4 * sizeof(T), kSrcVecBytes = 4 * sizeof(S);
  ChunkTensor<T, S> c;
  c.t = reinterpret_cast<T*>(tm.data);
  c.s = reinterpret_cast<const S*>(tm.src);
  c.m = reinterpret_cast<const S*>(tm.mean);
  c.numel = tm.numel;
  c.offset = static_cast<uint64_t>(tm.offset);
  c.key = static_cast<uint32_t>(tm.key);
  // Whole, aligned groups of 4: one vector load/store per operand (uniform per tensor).
  c.aligned = (tm.offset & 3) == 0 && (tm.data & (kVecBytes - 1)) == 0 &&
              (kOverwrite || (tm.src & (kSrcVecBytes - 1)) == 0) &&
              (!kHasMean || (tm.mean & (kSrcVecBytes - 1)) == 0);
  return c;
}

template <class T, class S, bool kHasMean, bool kOverwrite, bool kStochastic>
__global__ void __launch_bounds__(kThreads)
perturb_kernel(const TensorMeta* __restrict__ meta, int64_t n_tensors, int64_t total_chunks,
               const uint64_t* __restrict__ seeds, const float* __restrict__ coeffs,
               int64_t n_seeds, float decay, float mean_coeff, uint64_t rounding_seed) {
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const TensorMeta tm =
        meta[find_owner<TensorMeta, &TensorMeta::chunk_begin>(meta, n_tensors, chunk)];
    const ChunkTensor<T, S> ct = chunk_tensor<T, S, kHasMean, kOverwrite>(tm);
    // The rounding hash state of the tensor (pgap/rounding.h), once per chunk.
    const uint64_t rbase = kStochastic ? rounding_base(rounding_seed, ct.key) : 0u;
    const uint64_t chunk_block = (ct.offset >> 2) +
                                 static_cast<uint64_t>(chunk - tm.chunk_begin) * kChunkBlocks +
                                 threadIdx.x;
    // Consecutive threads take consecutive Philox blocks in each of the kBlocksPerThread rounds
    // (coalesced); the blocks only grow, so the first one past the tensor ends the chunk.
#pragma unroll 1
    for (int turn = 0; turn < kBlocksPerThread; ++turn) {
      const uint64_t block = chunk_block + static_cast<uint64_t>(turn) * kThreads;
      const int64_t first = static_cast<int64_t>((block << 2) - ct.offset);  // local index of lane 0
      if (first >= ct.numel) break;
      float acc[4];
      seeded_block_sum(seeds, coeffs, n_seeds, ct.key, block, acc);
      // The rounding words of the same four element indices (read only when kStochastic).
      Words4 rw{0u, 0u, 0u, 0u};
      if (kStochastic) rw = rounding_block_words(rbase, block);
      apply_group<T, S, kHasMean, kOverwrite, kStochastic>(ct.t, ct.s, ct.m, first, ct.numel,
                                                         ct.aligned, acc, rw, decay, mean_coeff);
    }
  }
}

// The Rademacher stream. A chunk is kRademacherChunkBlocks blocks of 128 elements of one tensor,
// kRademacherWarpBlocks per warp, in the warp schedule of pgap/rademacher.h: per seed each lane
// draws one Philox block and keeps one word, and in step r shuffles in the word of block r it
// needs for its four elements 4*lane .. 4*lane + 3 of that block (contiguous across the warp).
template <class T, class S, bool kHasMean, bool kOverwrite, bool kStochastic>
__global__ void __launch_bounds__(kThreads)
rademacher_kernel(const TensorMeta* __restrict__ meta, int64_t n_tensors, int64_t total_chunks,
                  const uint64_t* __restrict__ seeds, const float* __restrict__ coeffs,
                  int64_t n_seeds, float decay, float mean_coeff, uint64_t rounding_seed) {
  const uint32_t lane = threadIdx.x & 31u;
  const uint32_t warp = threadIdx.x >> 5;
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const TensorMeta tm =
        meta[find_owner<TensorMeta, &TensorMeta::chunk_begin>(meta, n_tensors, chunk)];
    const ChunkTensor<T, S> ct = chunk_tensor<T, S, kHasMean, kOverwrite>(tm);
    const uint64_t rbase = kStochastic ? rounding_base(rounding_seed, ct.key) : 0u;
    const uint64_t first_block = rademacher_block(ct.offset) +
                                 static_cast<uint64_t>(chunk - tm.chunk_begin) * kRademacherChunkBlocks +
                                 static_cast<uint64_t>(warp) * kRademacherWarpBlocks;
    // Local index of the warp's first element (negative when the tensor starts inside the block).
    // The test is uniform across the warp, so every lane reaches the shuffles below.
    if (static_cast<int64_t>(first_block * kRademacherBlockElements - ct.offset) >= ct.numel) continue;
    // acc[r][k]: sum_j coeffs[j] * rho_j of the lane's element k in block first_block + r, in
    // seed order from coeffs[0] * rho_0 (the host's and the reference's order).
    float acc[kRademacherWarpBlocks][4] = {};
#pragma unroll 1
    for (int64_t j = 0; j < n_seeds; ++j) {
      const uint32_t kept = word_of_lane(
          rademacher_block_words(seeds[j], ct.key, first_block + rademacher_lane_block(lane)),
          rademacher_lane_word(lane));
      const float c = coeffs[j];
#pragma unroll
      for (uint32_t r = 0; r < kRademacherWarpBlocks; ++r) {
        float term[4];
        rademacher_lane_terms(c, __shfl_sync(0xFFFFFFFFu, kept, rademacher_source_lane(lane, r)),
                              lane, term);
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[r][k] = j == 0 ? term[k] : acc[r][k] + term[k];
      }
    }
#pragma unroll
    for (uint32_t r = 0; r < kRademacherWarpBlocks; ++r) {
      const uint64_t e0 = (first_block + r) * kRademacherBlockElements + 4u * lane;  // stream index
      const int64_t first = static_cast<int64_t>(e0 - ct.offset);
      if (first >= ct.numel) break;  // grows with r
      Words4 rw{0u, 0u, 0u, 0u};
      if (kStochastic) rw = rounding_block_words(rbase, e0 >> 2);
      // A tensor that starts inside the warp's first block has groups before it (first < 0).
      apply_group<T, S, kHasMean, kOverwrite, kStochastic>(ct.t, ct.s, ct.m, first, ct.numel,
                                                         ct.aligned && first >= 0, acc[r], rw,
                                                         decay, mean_coeff);
    }
  }
}

template <class T, class S, bool kStochastic, bool kRademacher>
void launch(const TensorMeta* meta, int64_t n_tensors, int64_t total_chunks, const uint64_t* seeds,
            const float* coeffs, int64_t n_seeds, float decay, float mean_coeff, bool has_mean,
            uint64_t rounding_seed, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(total_chunks < (1 << 30) ? total_chunks : (1 << 30));
  const bool overwrite = decay == 0.0f;
#define PGAP_ARGS meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay, mean_coeff, rounding_seed
#define PGAP_LAUNCH(M, O)                                                                   \
  do {                                                                                      \
    if constexpr (kRademacher)                                                              \
      rademacher_kernel<T, S, M, O, kStochastic><<<grid, kThreads, 0, stream>>>(PGAP_ARGS); \
    else                                                                                    \
      perturb_kernel<T, S, M, O, kStochastic><<<grid, kThreads, 0, stream>>>(PGAP_ARGS);    \
  } while (0)
  if constexpr (!std::is_same<T, S>::value) {  // a copy into another dtype: decay 1, never 0
    if (overwrite) throw std::invalid_argument("perturb: a copy into another dtype needs decay != 0");
    if (has_mean) PGAP_LAUNCH(true, false); else PGAP_LAUNCH(false, false);
  } else if (has_mean) {
    if (overwrite) PGAP_LAUNCH(true, true); else PGAP_LAUNCH(true, false);
  } else {
    if (overwrite) PGAP_LAUNCH(false, true); else PGAP_LAUNCH(false, false);
  }
#undef PGAP_LAUNCH
#undef PGAP_ARGS
}

// Stochastic rounding in place only (S == T): copies into another dtype round to nearest.
template <class T, class S, bool kRademacher>
void launch_rounding(const TensorMeta* meta, int64_t n_tensors, int64_t total_chunks,
                     const uint64_t* seeds, const float* coeffs, int64_t n_seeds, float decay,
                     float mean_coeff, bool has_mean, bool stochastic, uint64_t rounding_seed,
                     cudaStream_t stream) {
  if constexpr (kHasStochastic<T> && std::is_same<T, S>::value) {
    if (stochastic) {
      launch<T, S, true, kRademacher>(meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay,
                                      mean_coeff, has_mean, rounding_seed, stream);
      return;
    }
  } else {
    if (stochastic && !std::is_same<T, float>::value)
      throw std::invalid_argument("perturb: a copy into another dtype is rounded to nearest");
  }
  launch<T, S, false, kRademacher>(meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay,
                                mean_coeff, has_mean, rounding_seed, stream);
}

// The written type T, then the source type S (each of the three dtypes).
template <class T>
void perturb_from(DType src_dtype, const TensorMeta* meta, int64_t n_tensors, int64_t total_chunks,
                  const uint64_t* seeds, const float* coeffs, int64_t n_seeds, float decay,
                  float mean_coeff, bool has_mean, bool stochastic, uint64_t rounding_seed,
                  Distribution distribution, cudaStream_t s) {
#define PGAP_LAUNCH(S)                                                                          \
  do {                                                                                          \
    if (distribution == Distribution::kRademacher)                                              \
      launch_rounding<T, S, true>(meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay, \
                                  mean_coeff, has_mean, stochastic, rounding_seed, s);          \
    else                                                                                        \
      launch_rounding<T, S, false>(meta, n_tensors, total_chunks, seeds, coeffs, n_seeds,       \
                                   decay, mean_coeff, has_mean, stochastic, rounding_seed, s);  \
  } while (0)
  switch (src_dtype) {
    case DType::kFloat32: PGAP_LAUNCH(float); break;
    case DType::kBFloat16: PGAP_LAUNCH(__nv_bfloat16); break;
    case DType::kFloat16: PGAP_LAUNCH(__half); break;
  }
#undef PGAP_LAUNCH
}

}  // namespace

void perturb(DType dtype, DType src_dtype, const TensorMeta* meta, int64_t n_tensors,
             int64_t total_chunks, const uint64_t* seeds, const float* coeffs, int64_t n_seeds, float decay,
             float mean_coeff, bool has_mean, bool stochastic, uint64_t rounding_seed,
             Distribution distribution, int device, void* stream) {
  if (total_chunks == 0) return;
  const DeviceGuard guard(device, "perturb: select the tensors' device");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define PGAP_LAUNCH(T)                                                                            \
  perturb_from<T>(src_dtype, meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay,        \
                  mean_coeff, has_mean, stochastic, rounding_seed, distribution, s)
  switch (dtype) {
    case DType::kFloat32: PGAP_LAUNCH(float); break;
    case DType::kBFloat16: PGAP_LAUNCH(__nv_bfloat16); break;
    case DType::kFloat16: PGAP_LAUNCH(__half); break;
  }
#undef PGAP_LAUNCH
  check(cudaGetLastError(), "perturb CUDA launch");
}

}  // namespace cuda
}  // namespace pgap
