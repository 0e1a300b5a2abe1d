// CUDA fused perturbation over the shared philox4x32-10/v1 device math (pgap/normal.h).
//
// A CUDA block handles one chunk of kChunkBlocks Philox blocks of one tensor; each thread
// draws the four normals of kBlocksPerThread Philox blocks in turn (all seeds) and updates their
// elements, reading the decay term from the tensor's source (the tensor itself for perturb_,
// another for perturbed).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/perturb.h"
#include "cuda/dtype.cuh"
#include "cuda/runtime.cuh"
#include "pgap/normal.h"

namespace pgap {
namespace cuda {
namespace {

template <class T, bool kHasMean, bool kOverwrite, bool kStochastic>
__global__ void __launch_bounds__(kThreads)
perturb_kernel(const TensorMeta* __restrict__ meta, int64_t n_tensors, int64_t total_chunks,
               const uint64_t* __restrict__ seeds, const float* __restrict__ coeffs,
               int64_t n_seeds, float decay, float mean_coeff, uint64_t rounding_seed) {
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const TensorMeta tm =
        meta[find_owner<TensorMeta, &TensorMeta::chunk_begin>(meta, n_tensors, chunk)];
    const uint64_t offset = static_cast<uint64_t>(tm.offset);
    const uint32_t key = static_cast<uint32_t>(tm.key);
    T* t = reinterpret_cast<T*>(tm.data);
    const T* s = reinterpret_cast<const T*>(tm.src);  // == t in place
    const T* m = reinterpret_cast<const T*>(tm.mean);
    // Whole, aligned Philox blocks: one vector load/store per operand (uniform per tensor).
    constexpr int64_t kVecBytes = 4 * sizeof(T);
    const bool aligned = (tm.offset & 3) == 0 && (tm.data & (kVecBytes - 1)) == 0 &&
                         (kOverwrite || (tm.src & (kVecBytes - 1)) == 0) &&
                         (!kHasMean || (tm.mean & (kVecBytes - 1)) == 0);
    const uint64_t chunk_block =
        (offset >> 2) + static_cast<uint64_t>(chunk - tm.chunk_begin) * kChunkBlocks + threadIdx.x;
    // Consecutive threads take consecutive Philox blocks in each of the kBlocksPerThread rounds
    // (coalesced); the blocks only grow, so the first one past the tensor ends the chunk.
#pragma unroll 1
    for (int turn = 0; turn < kBlocksPerThread; ++turn) {
      const uint64_t block = chunk_block + static_cast<uint64_t>(turn) * kThreads;
      const int64_t first = static_cast<int64_t>((block << 2) - offset);  // local index of lane 0
      if (first >= tm.numel) break;
      float acc[4];
      seeded_block_sum(seeds, coeffs, n_seeds, key, block, acc);
      // The rounding words of the same four element indices (read only when kStochastic).
      Words4 rw{0u, 0u, 0u, 0u};
      if (kStochastic) rw = rounding_block_words(rounding_seed, key, block);
      if (aligned && first + 3 < tm.numel) {
        Vec4<T> out;
        if (!kOverwrite) out = *reinterpret_cast<const Vec4<T>*>(s + first);
        Vec4<T> mv;
        if (kHasMean) mv = *reinterpret_cast<const Vec4<T>*>(m + first);
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
          float base = kOverwrite ? 0.0f : decay * Conv<T>::load(out.v[lane]);
          if (kHasMean) base = base + mean_coeff * Conv<T>::load(mv.v[lane]);
          out.v[lane] = round_store<T, kStochastic>(base + acc[lane], word_of_lane(rw, lane));
        }
        *reinterpret_cast<Vec4<T>*>(t + first) = out;
        continue;
      }
#pragma unroll
      for (int lane = 0; lane < 4; ++lane) {
        const int64_t l = first + lane;
        if (l < 0 || l >= tm.numel) continue;
        float base = kOverwrite ? 0.0f : decay * Conv<T>::load(s[l]);
        if (kHasMean) base = base + mean_coeff * Conv<T>::load(m[l]);
        t[l] = round_store<T, kStochastic>(base + acc[lane], word_of_lane(rw, lane));
      }
    }
  }
}

template <class T, bool kStochastic>
void launch(const TensorMeta* meta, int64_t n_tensors, int64_t total_chunks, const uint64_t* seeds,
            const float* coeffs, int64_t n_seeds, float decay, float mean_coeff, bool has_mean,
            uint64_t rounding_seed, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(total_chunks < (1 << 30) ? total_chunks : (1 << 30));
  const bool overwrite = decay == 0.0f;
#define PGAP_LAUNCH(M, O)                                                                  \
  perturb_kernel<T, M, O, kStochastic><<<grid, kThreads, 0, stream>>>(                     \
      meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay, mean_coeff, rounding_seed)
  if (has_mean) {
    if (overwrite) PGAP_LAUNCH(true, true); else PGAP_LAUNCH(true, false);
  } else {
    if (overwrite) PGAP_LAUNCH(false, true); else PGAP_LAUNCH(false, false);
  }
#undef PGAP_LAUNCH
}

template <class T>
void launch_rounding(const TensorMeta* meta, int64_t n_tensors, int64_t total_chunks,
                     const uint64_t* seeds, const float* coeffs, int64_t n_seeds, float decay,
                     float mean_coeff, bool has_mean, bool stochastic, uint64_t rounding_seed,
                     cudaStream_t stream) {
  if constexpr (kHasStochastic<T>) {
    if (stochastic) {
      launch<T, true>(meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay, mean_coeff,
                      has_mean, rounding_seed, stream);
      return;
    }
  }
  launch<T, false>(meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay, mean_coeff,
                   has_mean, rounding_seed, stream);
}

}  // namespace

void perturb(DType dtype, const TensorMeta* meta, int64_t n_tensors, int64_t total_chunks,
             const uint64_t* seeds, const float* coeffs, int64_t n_seeds, float decay,
             float mean_coeff, bool has_mean, bool stochastic, uint64_t rounding_seed, int device,
             void* stream) {
  if (total_chunks == 0) return;
  const DeviceGuard guard(device, "perturb: select the tensors' device");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define PGAP_LAUNCH(T)                                                                         \
  launch_rounding<T>(meta, n_tensors, total_chunks, seeds, coeffs, n_seeds, decay, mean_coeff,  \
                     has_mean, stochastic, rounding_seed, s)
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
