// CUDA subspace perturbation: W <- decay*W + Xi*V^T, Xi (m x r) drawn from the stream in shared
// memory, for every matrix of a dtype group in one launch.
//
// Work: a 1-D grid walks a flattened tile index with a grid-stride loop; tile -> matrix by a
// binary search over the table's tile_begin column. A tile is kRows rows x `span` column chunks
// of kCols columns of one W. Per tile the CTA
//   1. draws Xi's kRows x r block into shared memory (Xs[k][row], transposed), once when
//      r <= kRankStep, else one kRankStep-wide slice at a time for every column chunk: threads
//      take whole Philox blocks (4 consecutive stream indices, all seeds) of the rows' runs
//      offset + i*r + k0 .. + klen - 1 and keep the lanes inside the run;
//   2. per column chunk: loads W's 64 x 128 tile into registers (so that the loads are in flight
//      during the product; skipped when decay == 0), stages V's rows of the chunk in shared
//      memory (Vs[k][col], transposed), and accumulates acc[i][j] = sum_k Xi[i, k] * V[j, k] in
//      float32 with one fmaf per k, k ascending;
//   3. writes fmaf(decay, W, acc) rounded once to W's dtype (acc alone when decay == 0).
// 256 threads as 8 rows x 32 columns of threads; each owns 8 rows (ty*8 ..) x 4 columns
// (tx*4 ..): Xs is read as two broadcast float4 per k, Vs as one conflict-free float4, and a
// warp stores 128 consecutive columns of a row.
//
// Bits: Xi is computed by the same expressions as perturb_ and the native backend (pgap/normal.h,
// built with --fmad=false; seeded_block_sum adds c_j*xi_j in seed order), and each output is
// the FMA chain over k ascending followed by fmaf(decay, W, acc), as the native AVX2/AVX-512
// kernels compute it: cuda and native agree bit for bit for float32 (and hence for the 16-bit
// dtypes, rounded once from the same float32). A row shard gets the bits of the whole matrix.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/dtype.cuh"
#include "cuda/runtime.cuh"
#include "cuda/subspace.h"
#include "pgap/normal.h"

namespace pgap {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = static_cast<int>(kSubspaceRows);
constexpr int kCols = static_cast<int>(kSubspaceCols);
constexpr int kRankStep = static_cast<int>(kSubspaceRankStep);
constexpr int kTY = 8, kTX = 32;          // thread grid
constexpr int kTM = kRows / kTY;          // rows per thread (8)
constexpr int kTN = kCols / kTX;          // columns per thread (4)
constexpr int kPad = 4;                   // keeps float4 rows aligned, spreads transposed stores
constexpr int64_t kMaxGrid = int64_t(1) << 30;
static_assert(kTY * kTX == kThreads && kTN == 4 && kTM % 4 == 0, "thread layout");

// Xs[kk][u] = sum_j coeffs[j] * xi(seeds[j], key, offset + (row0 + u)*r + k0 + kk) for
// kk < klen and rows row0 + u < m (other entries are left as they are; they only reach
// accumulators that are never stored).
__device__ __forceinline__ void draw_xi(float (*Xs)[kRows + kPad], const SubspaceMeta& mt,
                                        int64_t row0, int64_t k0, int klen,
                                        const uint64_t* __restrict__ seeds,
                                        const float* __restrict__ coeffs, int64_t n_seeds) {
  const int slots_per_row = (klen + 3) / 4 + 1;  // Philox blocks a run of klen indices can touch
  const uint32_t key = static_cast<uint32_t>(mt.key);
  for (int slot = static_cast<int>(threadIdx.x); slot < kRows * slots_per_row; slot += kThreads) {
    const int u = slot / slots_per_row, j = slot % slots_per_row;
    const int64_t row = row0 + u;
    if (row >= mt.m) continue;
    const uint64_t start = static_cast<uint64_t>(mt.offset) + static_cast<uint64_t>(row * mt.r + k0);
    const int first = 4 * j - static_cast<int>(start & 3);  // run position of lane 0
    if (first >= klen) continue;
    float z[4];
    seeded_block_sum(seeds, coeffs, n_seeds, key, (start >> 2) + static_cast<uint64_t>(j), z);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int v = first + lane;
      if (v >= 0 && v < klen) Xs[v][u] = z[lane];
    }
  }
}

// Vs[kk][c] = V[col0 + c, k0 + kk] for c < kCols, kk < klen; 0 for columns past n.
__device__ __forceinline__ void stage_basis(float (*Vs)[kCols + kPad], const float* __restrict__ v,
                                            int64_t n, int64_t r, int64_t col0, int64_t k0,
                                            int klen, bool vec) {
  if (vec) {  // r, k0, klen multiples of 4 and V 16-byte aligned: whole float4 of V's rows
    const int quads = klen / 4;
    for (int e = static_cast<int>(threadIdx.x); e < kCols * quads; e += kThreads) {
      const int c = e / quads, kk = 4 * (e % quads);
      const int64_t col = col0 + c;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (col < n) x = __ldg(reinterpret_cast<const float4*>(v + col * r + k0 + kk));
      Vs[kk][c] = x.x;
      Vs[kk + 1][c] = x.y;
      Vs[kk + 2][c] = x.z;
      Vs[kk + 3][c] = x.w;
    }
    return;
  }
  for (int e = static_cast<int>(threadIdx.x); e < kCols * klen; e += kThreads) {
    const int c = e / klen, kk = e % klen;
    const int64_t col = col0 + c;
    Vs[kk][c] = col < n ? __ldg(v + col * r + k0 + kk) : 0.0f;
  }
}

template <class T, bool kOverwrite, bool kStochastic>
__global__ void __launch_bounds__(kThreads, 2)
subspace_kernel(const SubspaceMeta* __restrict__ meta, int64_t count, int64_t total_tiles,
                int64_t span, const uint64_t* __restrict__ seeds, const float* __restrict__ coeffs,
                int64_t n_seeds, float decay, uint64_t rounding_seed) {
  __shared__ __align__(16) float Xs[kRankStep][kRows + kPad];
  __shared__ __align__(16) float Vs[kRankStep][kCols + kPad];
  const int tx = static_cast<int>(threadIdx.x) % kTX, ty = static_cast<int>(threadIdx.x) / kTX;

  for (int64_t tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {  // CTA-uniform
    const SubspaceMeta mt =
        meta[find_owner<SubspaceMeta, &SubspaceMeta::tile_begin>(meta, count, tile)];
    const int64_t local = tile - mt.tile_begin;
    const int64_t row0 = (local / mt.col_spans) * kRows;
    const int64_t chunks = (mt.n + kCols - 1) / kCols;
    const int64_t chunk_lo = (local % mt.col_spans) * span;
    const int64_t chunk_hi = chunk_lo + span < chunks ? chunk_lo + span : chunks;
    const int64_t r = mt.r, k_steps = (r + kRankStep - 1) / kRankStep;
    T* __restrict__ w = reinterpret_cast<T*>(mt.w);
    const float* __restrict__ basis = reinterpret_cast<const float*>(mt.basis);
    const bool vec_w = mt.n % 4 == 0 && mt.w % static_cast<int64_t>(sizeof(Vec4<T>)) == 0;
    const bool vec_v = r % 4 == 0 && mt.basis % 16 == 0;
    const uint64_t rbase =
        kStochastic ? rounding_base(rounding_seed, static_cast<uint32_t>(mt.key)) : 0u;

    for (int64_t chunk = chunk_lo; chunk < chunk_hi; ++chunk) {
      const int64_t col = chunk * kCols + tx * kTN;  // this thread's first column
      // 1. This thread's W values (vector path), in flight during the product.
      Vec4<T> wv[kTM];
      if (!kOverwrite && vec_w) {
#pragma unroll
        for (int i = 0; i < kTM; ++i) {
          const int64_t row = row0 + ty * kTM + i;
          if (row < mt.m && col < mt.n) wv[i] = *reinterpret_cast<const Vec4<T>*>(w + row * mt.n + col);
        }
      }
      float acc[kTM][kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = 0.0f;

      // 2. acc += Xi[rows, k0 : k0 + klen] * V[cols, k0 : k0 + klen]^T, k ascending.
      for (int64_t step = 0; step < k_steps; ++step) {  // CTA-uniform
        const int64_t k0 = step * kRankStep;
        const int klen = static_cast<int>(r - k0 < kRankStep ? r - k0 : kRankStep);
        if (k_steps > 1 || chunk == chunk_lo) draw_xi(Xs, mt, row0, k0, klen, seeds, coeffs, n_seeds);
        stage_basis(Vs, basis, mt.n, r, chunk * kCols, k0, klen, vec_v);
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < klen; ++kk) {
          const float4 x0 = *reinterpret_cast<const float4*>(&Xs[kk][ty * kTM]);
          const float4 x1 = *reinterpret_cast<const float4*>(&Xs[kk][ty * kTM + 4]);
          const float4 b = *reinterpret_cast<const float4*>(&Vs[kk][tx * kTN]);
          const float a[kTM] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
          const float bv[kTN] = {b.x, b.y, b.z, b.w};
#pragma unroll
          for (int i = 0; i < kTM; ++i)
#pragma unroll
            for (int j = 0; j < kTN; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
        }
        __syncthreads();  // Xs and Vs are rewritten next (this chunk's next slice, or later)
      }

      // 3. Epilogue: one rounding of fmaf(decay, W, acc) (decay == 0: W is not read).
      if (col >= mt.n) continue;
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const int64_t row = row0 + ty * kTM + i;
        if (row >= mt.m) continue;
        T* w_row = w + row * mt.n;
        uint32_t x[kTN] = {0u, 0u, 0u, 0u};  // rounding words of the 4 columns
        if (kStochastic)
          rounding_words4(rbase, static_cast<uint64_t>(mt.rounding_index) +
                                     static_cast<uint64_t>(row * mt.n + col), x);
        if (vec_w) {  // n % 4 == 0: the 4 columns lie inside the row
          Vec4<T> out;
#pragma unroll
          for (int j = 0; j < kTN; ++j)
            out.v[j] = round_store<T, kStochastic>(
                kOverwrite ? acc[i][j] : fmaf(decay, Conv<T>::load(wv[i].v[j]), acc[i][j]), x[j]);
          *reinterpret_cast<Vec4<T>*>(w_row + col) = out;
        } else {
#pragma unroll
          for (int j = 0; j < kTN; ++j) {
            if (col + j >= mt.n) break;
            w_row[col + j] = round_store<T, kStochastic>(
                kOverwrite ? acc[i][j] : fmaf(decay, Conv<T>::load(w_row[col + j]), acc[i][j]),
                x[j]);
          }
        }
      }
    }
  }
}

template <class T, bool kStochastic>
void launch(const SubspaceMeta* meta, int64_t count, int64_t total_tiles, int64_t span,
            const uint64_t* seeds, const float* coeffs, int64_t n_seeds, float decay,
            uint64_t rounding_seed, cudaStream_t s) {
  const unsigned grid = static_cast<unsigned>(total_tiles < kMaxGrid ? total_tiles : kMaxGrid);
  if (decay == 0.0f)
    subspace_kernel<T, true, kStochastic><<<grid, kThreads, 0, s>>>(
        meta, count, total_tiles, span, seeds, coeffs, n_seeds, decay, rounding_seed);
  else
    subspace_kernel<T, false, kStochastic><<<grid, kThreads, 0, s>>>(
        meta, count, total_tiles, span, seeds, coeffs, n_seeds, decay, rounding_seed);
}

template <class T>
void launch_rounding(const SubspaceMeta* meta, int64_t count, int64_t total_tiles, int64_t span,
                     const uint64_t* seeds, const float* coeffs, int64_t n_seeds, float decay,
                     bool stochastic, uint64_t rounding_seed, cudaStream_t s) {
  if constexpr (kHasStochastic<T>) {
    if (stochastic) {
      launch<T, true>(meta, count, total_tiles, span, seeds, coeffs, n_seeds, decay, rounding_seed, s);
      return;
    }
  }
  launch<T, false>(meta, count, total_tiles, span, seeds, coeffs, n_seeds, decay, rounding_seed, s);
}

}  // namespace

void subspace_perturb(DType dtype, const SubspaceMeta* meta, int64_t count, int64_t total_tiles,
                      int64_t span, const uint64_t* seeds, const float* coeffs, int64_t n_seeds,
                      float decay, bool stochastic, uint64_t rounding_seed, int device,
                      void* stream) {
  if (count == 0 || total_tiles == 0) return;
  const DeviceGuard guard(device, "subspace_perturb: select the tensors' device");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define PGAP_LAUNCH(T)                                                                        \
  launch_rounding<T>(meta, count, total_tiles, span, seeds, coeffs, n_seeds, decay, stochastic, \
                     rounding_seed, s)
  switch (dtype) {
    case DType::kFloat32: PGAP_LAUNCH(float); break;
    case DType::kBFloat16: PGAP_LAUNCH(__nv_bfloat16); break;
    case DType::kFloat16: PGAP_LAUNCH(__half); break;
  }
#undef PGAP_LAUNCH
  check(cudaGetLastError(), "subspace_perturb launch");
}

}  // namespace cuda
}  // namespace pgap
