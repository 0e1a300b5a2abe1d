// CUDA low-rank ops: a tiled float32 GEMM whose epilogue updates W in place, and an implicit
// Gaussian-sum sketch whose tiles of A are generated in shared memory.
//
// Both kernels walk a flattened tile index (problem, row tile, column tile) with a grid-stride
// loop over a 1-D grid, so no grid dimension can overflow and every index is int64. Every
// output element is computed by one thread as one sequential float32 FMA chain over the inner
// dimension, in ascending order: the result does not depend on the tiling or on scheduling.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/lowrank.h"
#include "cuda/dtype.cuh"
#include "cuda/runtime.cuh"
#include "pgap/normal.h"

namespace pgap {
namespace cuda {
namespace {

constexpr int kThreads = 256;                    // threads per CTA, both kernels
constexpr int64_t kMaxGrid = int64_t(1) << 30;   // CTAs per launch; larger grids loop

// N consecutive floats of shared memory (N = 1, 2, 4; p aligned to 4*N bytes) into v[0..N).
template <int N>
__device__ __forceinline__ void load_shared(const float* p, float* v) {
  if constexpr (N == 4) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
  } else if constexpr (N == 2) {
    const float2 x = *reinterpret_cast<const float2*>(p);
    v[0] = x.x; v[1] = x.y;
  } else {
    static_assert(N == 1, "N must be 1, 2 or 4");
    v[0] = *p;
  }
}

// ---------------------------------------------------------------------------------------------
// lowrank_update: W <- decay*W + L*R^T ("NT" GEMM: L (m x k), R (n x k), both k-contiguous).
//
// CTA tile BM x BN, k step kBK = 8, 256 threads as a (BM/TM) x (BN/TN) grid, each owning a
// TM x TN register micro-tile made of (TM/4) x (TN/4) blocks of 4 x 4: micro-tile row
// g*(BM/(TM/4)) + ty*4 + i, column h*(BN/(TN/4)) + tx*4 + j. The k-slices of L and R are staged
// transposed (As[kk][row], Bs[kk][col]) in double-buffered shared memory, so each thread reads
// its 4-row and 4-column groups as float4; the next slice is loaded from global memory into
// registers while the current one is multiplied (one __syncthreads per k step). Rows are padded
// by 4 floats so that the transposing stores hit 32 distinct banks.
constexpr int kBK = 8;
constexpr int kPad = 4;

template <int BM, int BN, int TM, int TN>
struct GemmTile {
  static constexpr int kTX = BN / TN, kTY = BM / TM;        // thread grid
  static constexpr int kGM = TM / 4, kGN = TN / 4;          // 4x4 blocks per micro-tile
  static constexpr int kStepM = BM / kGM, kStepN = BN / kGN;  // distance between those blocks
  static constexpr int kLoadsA = BM * kBK / kThreads, kLoadsB = BN * kBK / kThreads;
  static_assert(kTX * kTY == kThreads, "thread grid must have kThreads threads");
  static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tiles are made of 4x4 blocks");
  static_assert(kStepM == 4 * kTY && kStepN == 4 * kTX, "blocks must tile the CTA tile");
  static_assert(BM * kBK % kThreads == 0 && BN * kBK % kThreads == 0, "whole loads per thread");
};

// Global -> registers: element e = tid + i*kThreads of a ROWS x kBK slice is row e / kBK,
// column e % kBK; rows >= `rows` and columns >= k read as 0 (so they add exact zeros).
template <int LOADS>
__device__ __forceinline__ void load_slice(const float* __restrict__ src, int64_t row0,
                                           int64_t rows, int64_t k0, int64_t k, float* reg) {
#pragma unroll
  for (int i = 0; i < LOADS; ++i) {
    const int e = static_cast<int>(threadIdx.x) + i * kThreads;
    const int64_t row = row0 + e / kBK, col = k0 + e % kBK;
    reg[i] = (row < rows && col < k) ? __ldg(src + row * k + col) : 0.0f;
  }
}

// Registers -> shared, transposed: dst[kk * STRIDE + r].
template <int LOADS, int STRIDE>
__device__ __forceinline__ void stash_slice(float* dst, const float* reg) {
#pragma unroll
  for (int i = 0; i < LOADS; ++i) {
    const int e = static_cast<int>(threadIdx.x) + i * kThreads;
    dst[(e % kBK) * STRIDE + e / kBK] = reg[i];
  }
}

// Two CTAs per SM for the 128x128 tile (<= 128 registers), four for the 64x64 one (<= 64).
// kStochastic: W_p[row, col] rounds stochastically with the rounding word of element
// indices[p] + row*n + col under (rounding_seed, keys[p]) (pgap/rounding.h).
template <class T, int BM, int BN, int TM, int TN, bool kOverwrite, bool kStochastic>
__global__ void __launch_bounds__(kThreads, BM * BN >= 128 * 128 ? 2 : 4)
lowrank_kernel(const int64_t* __restrict__ w_ptrs, const int64_t* __restrict__ left_ptrs,
               const int64_t* __restrict__ right_ptrs, int64_t m, int64_t n, int64_t k,
               int64_t tiles_n, int64_t tiles_per_problem, int64_t total_tiles, float decay,
               const int64_t* __restrict__ keys, const int64_t* __restrict__ indices,
               uint64_t rounding_seed) {
  using G = GemmTile<BM, BN, TM, TN>;
  constexpr int SA = BM + kPad, SB = BN + kPad;
  __shared__ __align__(16) float As[2][kBK][SA];
  __shared__ __align__(16) float Bs[2][kBK][SB];
  const int tx = static_cast<int>(threadIdx.x) % G::kTX;
  const int ty = static_cast<int>(threadIdx.x) / G::kTX;
  const int64_t k_steps = (k + kBK - 1) / kBK;

  for (int64_t tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {  // CTA-uniform
    const int64_t p = tile / tiles_per_problem;
    const int64_t rem = tile - p * tiles_per_problem;
    const int64_t row0 = (rem / tiles_n) * BM, col0 = (rem % tiles_n) * BN;
    const float* __restrict__ left = reinterpret_cast<const float*>(left_ptrs[p]);
    const float* __restrict__ right = reinterpret_cast<const float*>(right_ptrs[p]);

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    float ra[G::kLoadsA], rb[G::kLoadsB];
    load_slice<G::kLoadsA>(left, row0, m, 0, k, ra);
    load_slice<G::kLoadsB>(right, col0, n, 0, k, rb);
    stash_slice<G::kLoadsA, SA>(&As[0][0][0], ra);
    stash_slice<G::kLoadsB, SB>(&Bs[0][0][0], rb);
    __syncthreads();

    for (int64_t step = 0; step < k_steps; ++step) {
      const int buf = static_cast<int>(step & 1);
      const bool more = step + 1 < k_steps;  // CTA-uniform
      if (more) {  // in flight while this slice is multiplied
        load_slice<G::kLoadsA>(left, row0, m, (step + 1) * kBK, k, ra);
        load_slice<G::kLoadsB>(right, col0, n, (step + 1) * kBK, k, rb);
      }
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) {
        float a[TM], b[TN];
#pragma unroll
        for (int g = 0; g < G::kGM; ++g) load_shared<4>(&As[buf][kk][g * G::kStepM + ty * 4], a + 4 * g);
#pragma unroll
        for (int h = 0; h < G::kGN; ++h) load_shared<4>(&Bs[buf][kk][h * G::kStepN + tx * 4], b + 4 * h);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      // Buffer buf^1 was last read in step - 1, before the barrier that ended it.
      if (more) {
        stash_slice<G::kLoadsA, SA>(&As[buf ^ 1][0][0], ra);
        stash_slice<G::kLoadsB, SB>(&Bs[buf ^ 1][0][0], rb);
      }
      __syncthreads();  // also ends all reads before the next tile's first stash
    }

    // Epilogue: one rounding of fmaf(decay, W, acc) (decay == 0: W is not read), the expression
    // of the host kernels (std::fma) and of CUDA subspace; --fmad=false, so the fma is explicit.
    T* __restrict__ w = reinterpret_cast<T*>(w_ptrs[p]);
    const bool vec = n % 4 == 0 && w_ptrs[p] % static_cast<int64_t>(sizeof(Vec4<T>)) == 0;
    const uint64_t rbase =
        kStochastic ? rounding_base(rounding_seed, static_cast<uint32_t>(keys[p])) : 0u;
    const uint64_t rindex = kStochastic ? static_cast<uint64_t>(indices[p]) : 0u;
#pragma unroll
    for (int g = 0; g < G::kGM; ++g) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t row = row0 + g * G::kStepM + ty * 4 + i;
        if (row >= m) continue;
        T* w_row = w + row * n;
#pragma unroll
        for (int h = 0; h < G::kGN; ++h) {
          const int64_t col = col0 + h * G::kStepN + tx * 4;  // multiple of 4
          if (col >= n) continue;
          const float* c = &acc[4 * g + i][4 * h];
          uint32_t x[4] = {0u, 0u, 0u, 0u};
          if (kStochastic)
            rounding_words4(rbase, rindex + static_cast<uint64_t>(row * n + col), x);
          if (vec) {  // n % 4 == 0: the whole group of 4 is inside the row
            Vec4<T> v;
            if (!kOverwrite) v = *reinterpret_cast<const Vec4<T>*>(w_row + col);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const float out = kOverwrite ? c[j] : fmaf(decay, Conv<T>::load(v.v[j]), c[j]);
              v.v[j] = round_store<T, kStochastic>(out, x[j]);
            }
            *reinterpret_cast<Vec4<T>*>(w_row + col) = v;
          } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              if (col + j >= n) break;
              const float out = kOverwrite ? c[j] : fmaf(decay, Conv<T>::load(w_row[col + j]), c[j]);
              w_row[col + j] = round_store<T, kStochastic>(out, x[j]);
            }
          }
        }
      }
    }
  }
}

// The arguments of a lowrank_update launch.
struct LowrankLaunch {
  const int64_t *w_ptrs, *left_ptrs, *right_ptrs;
  int64_t count, m, n, k;
  float decay;
  const int64_t *keys, *indices;  // rounding keys and element indices (stochastic only)
  bool stochastic;
  uint64_t rounding_seed;
};

template <class T, int BM, int BN, int TM, int TN, bool kStochastic>
void launch_lowrank(const LowrankLaunch& a, cudaStream_t s) {
  const int64_t tiles_m = (a.m + BM - 1) / BM, tiles_n = (a.n + BN - 1) / BN;
  const int64_t per_problem = tiles_m * tiles_n, total = a.count * per_problem;
  const unsigned grid = static_cast<unsigned>(total < kMaxGrid ? total : kMaxGrid);
#define PGAP_LAUNCH(O)                                                                        \
  lowrank_kernel<T, BM, BN, TM, TN, O, kStochastic><<<grid, kThreads, 0, s>>>(                \
      a.w_ptrs, a.left_ptrs, a.right_ptrs, a.m, a.n, a.k, tiles_n, per_problem, total, a.decay, \
      a.keys, a.indices, a.rounding_seed)
  if (a.decay == 0.0f) PGAP_LAUNCH(true); else PGAP_LAUNCH(false);
#undef PGAP_LAUNCH
}

template <class T, bool kStochastic>
void launch_lowrank_tiles(bool big, const LowrankLaunch& a, cudaStream_t s) {
  if (big) launch_lowrank<T, 128, 128, 8, 8, kStochastic>(a, s);
  else launch_lowrank<T, 64, 64, 4, 4, kStochastic>(a, s);
}

template <class T>
void launch_lowrank_for(bool big, const LowrankLaunch& a, cudaStream_t s) {
  if constexpr (kHasStochastic<T>) {
    if (a.stochastic) {
      launch_lowrank_tiles<T, true>(big, a, s);
      return;
    }
  }
  launch_lowrank_tiles<T, false>(big, a, s);
}

// ---------------------------------------------------------------------------------------------
// gaussian_sketch: out = A*omega (rows of A) or A^T*omega (columns of A), A generated in tiles.
//
// A CTA owns BR output rows x QT output columns (QT = 16*TQ) and walks the inner dimension in
// chunks of BI. Per chunk it
//   1. stages omega's BI x QT chunk in shared memory (Om[i][c], zero outside omega);
//   2. generates the BR x BI chunk of A (A^T) into As[i][r]: the chunk is cut into "segments",
//      runs of consecutive stream indices (one row of A each: BR segments of <= BI elements
//      without transpose, BI segments of <= BR elements with it), and each thread draws whole
//      Philox blocks (4 consecutive stream elements, all seeds) of one segment, keeping the
//      lanes that fall inside it. Entries outside A are zero (zero-filled first when the chunk
//      is ragged);
//   3. multiplies: 256 threads as 16 x 16, each with TR = BR/16 rows x TQ columns of the out
//      tile in registers (columns in groups of V = min(TQ, 4) at stride QT/(TQ/V)).
// No atomics: each output element is one thread's FMA chain over the whole inner dimension.
constexpr int kSkPad = 4;

template <int BR, int TQ>
struct SketchTile {
  static constexpr int kBI = 2048 / BR;            // inner chunk: BR*BI = 2048 entries of A
  static constexpr int kQT = 16 * TQ;
  static constexpr int kTR = BR / 16;
  static constexpr int kV = TQ < 4 ? TQ : 4;
  static constexpr int kGQ = TQ / kV, kStepQ = kQT / kGQ;
  static constexpr int kSmemBytes = 4 * (kBI * (BR + kSkPad) + kBI * kQT);
  static_assert(BR == 16 || BR == 32 || BR == 64, "BR");
  static_assert(TQ == 2 || TQ == 4 || TQ == 8 || TQ == 16, "TQ");
  static_assert(kSmemBytes <= 48 * 1024, "static shared memory");
  static_assert(kStepQ == 16 * kV, "column groups must tile QT");
};

// Two CTAs per SM (<= 128 registers) with 32 or 64 accumulators per thread, three otherwise.
template <int BR, int TQ, bool kTranspose>
__global__ void __launch_bounds__(kThreads, BR / 16 * TQ >= 32 ? 2 : 3)
sketch_kernel(const int64_t* __restrict__ keys, const int64_t* __restrict__ offsets,
              const int64_t* __restrict__ omega_ptrs, const int64_t* __restrict__ out_ptrs,
              int64_t m, int64_t n, int64_t q, const uint64_t* __restrict__ seeds,
              const float* __restrict__ coeffs, int64_t n_seeds, int64_t q_tiles,
              int64_t tiles_per_problem, int64_t total_tiles) {
  using S = SketchTile<BR, TQ>;
  constexpr int BI = S::kBI, QT = S::kQT, TR = S::kTR, V = S::kV;
  constexpr int SA = BR + kSkPad;
  __shared__ __align__(16) float As[BI][SA];
  __shared__ __align__(16) float Om[BI][QT];
  // Segments: rows of A inside the chunk. Without transpose, segment u is out-tile row u and
  // its elements are inner positions; with it, segment u is inner position u (a row of A) and
  // its elements are out-tile rows (columns of A).
  constexpr int kSegs = kTranspose ? BI : BR;
  constexpr int kSegCap = kTranspose ? BR : BI;  // multiple of 4
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  const int64_t rows = kTranspose ? n : m, inner = kTranspose ? m : n;
  // Segment starts are offset + a*n + (multiple of 4): all block-aligned iff offset and n are.
  const bool n_aligned = n % 4 == 0;

  for (int64_t tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {  // CTA-uniform
    const int64_t p = tile / tiles_per_problem;
    const int64_t rem = tile - p * tiles_per_problem;
    const int64_t row0 = (rem / q_tiles) * BR, q0 = (rem % q_tiles) * QT;
    const uint32_t key = static_cast<uint32_t>(keys[p]);
    const uint64_t offset = static_cast<uint64_t>(offsets[p]);
    const float* __restrict__ omega = reinterpret_cast<const float*>(omega_ptrs[p]);
    const int slots_per_seg = kSegCap / 4 + ((n_aligned && offset % 4 == 0) ? 0 : 1);
    const int slots = kSegs * slots_per_seg;

    float acc[TR][TQ];
#pragma unroll
    for (int r = 0; r < TR; ++r)
#pragma unroll
      for (int c = 0; c < TQ; ++c) acc[r][c] = 0.0f;

    for (int64_t i0 = 0; i0 < inner; i0 += BI) {  // CTA-uniform
      // 1. omega chunk: rows i0.. of omega, columns q0.. (coalesced along q).
      for (int e = tid; e < BI * QT; e += kThreads) {
        const int i = e / QT, c = e % QT;
        const int64_t ii = i0 + i, cc = q0 + c;
        Om[i][c] = (ii < inner && cc < q) ? __ldg(omega + ii * q + cc) : 0.0f;
      }
      // 2. A chunk. Segment u covers A row seg_row0 + u, columns col0 .. col0 + len - 1.
      const int64_t seg_row0 = kTranspose ? i0 : row0;
      const int64_t col0 = kTranspose ? row0 : i0;
      const int len = static_cast<int>(n - col0 < kSegCap ? n - col0 : kSegCap);  // >= 1
      const bool full = seg_row0 + kSegs <= m && len == kSegCap;  // CTA-uniform
      if (!full) {  // ragged chunk: entries no segment reaches must be 0, not stale
        for (int e = tid; e < BI * SA; e += kThreads) (&As[0][0])[e] = 0.0f;
        __syncthreads();
      }
      for (int slot = tid; slot < slots; slot += kThreads) {
        const int u = slot / slots_per_seg, j = slot % slots_per_seg;
        const int64_t a = seg_row0 + u;
        if (a >= m) continue;
        const uint64_t start = offset + static_cast<uint64_t>(a * n + col0);  // segment start
        const int first = 4 * j - static_cast<int>(start & 3);  // segment position of lane 0
        if (first >= len) continue;
        const uint64_t block = (start >> 2) + static_cast<uint64_t>(j);
        float z[4];  // as perturb_ computes it (--fmad=false): bit-identical
        seeded_block_sum(seeds, coeffs, n_seeds, key, block, z);
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
          const int v = first + lane;
          if (v < 0 || v >= len) continue;
          if (kTranspose) As[u][v] = z[lane];
          else As[v][u] = z[lane];
        }
      }
      __syncthreads();
      // 3. acc[r][c] += sum_i A(row0 + ty*TR + r, i0 + i) * Om[i][c], i ascending.
#pragma unroll 8
      for (int i = 0; i < BI; ++i) {
        float a[TR], b[TQ];
        load_shared<TR>(&As[i][ty * TR], a);
#pragma unroll
        for (int g = 0; g < S::kGQ; ++g) load_shared<V>(&Om[i][g * S::kStepQ + tx * V], b + g * V);
#pragma unroll
        for (int r = 0; r < TR; ++r)
#pragma unroll
          for (int c = 0; c < TQ; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
      }
      __syncthreads();  // As and Om are rewritten by the next chunk (or tile)
    }

    float* __restrict__ out = reinterpret_cast<float*>(out_ptrs[p]);
#pragma unroll
    for (int r = 0; r < TR; ++r) {
      const int64_t row = row0 + ty * TR + r;
      if (row >= rows) continue;
#pragma unroll
      for (int g = 0; g < S::kGQ; ++g) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const int64_t col = q0 + g * S::kStepQ + tx * V + v;
          if (col < q) out[row * q + col] = acc[r][g * V + v];
        }
      }
    }
  }
}

template <int BR, int TQ>
void launch_sketch(const int64_t* keys, const int64_t* offsets, const int64_t* omega_ptrs,
                   const int64_t* out_ptrs, int64_t count, int64_t m, int64_t n, int64_t q,
                   const uint64_t* seeds, const float* coeffs, int64_t n_seeds, bool transpose,
                   cudaStream_t s) {
  constexpr int QT = SketchTile<BR, TQ>::kQT;
  const int64_t rows = transpose ? n : m;
  const int64_t q_tiles = (q + QT - 1) / QT;
  const int64_t per_problem = ((rows + BR - 1) / BR) * q_tiles, total = count * per_problem;
  const unsigned grid = static_cast<unsigned>(total < kMaxGrid ? total : kMaxGrid);
  if (transpose)
    sketch_kernel<BR, TQ, true><<<grid, kThreads, 0, s>>>(keys, offsets, omega_ptrs, out_ptrs, m,
                                                          n, q, seeds, coeffs, n_seeds, q_tiles,
                                                          per_problem, total);
  else
    sketch_kernel<BR, TQ, false><<<grid, kThreads, 0, s>>>(keys, offsets, omega_ptrs, out_ptrs, m,
                                                           n, q, seeds, coeffs, n_seeds, q_tiles,
                                                           per_problem, total);
}

int sm_count(int device) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  return sms > 0 ? sms : 1;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void lowrank_update(DType dtype, const int64_t* w_ptrs, const int64_t* left_ptrs,
                    const int64_t* right_ptrs, int64_t count, int64_t m, int64_t n, int64_t k,
                    float decay, const int64_t* keys, const int64_t* indices, bool stochastic,
                    uint64_t rounding_seed, int device, void* stream) {
  if (count == 0 || m == 0 || n == 0) return;
  const DeviceGuard guard(device, "lowrank_update: select the tensors' device");
  // 128x128 tiles (8x8 per thread) once they fill every SM twice; 64x64 (4x4) otherwise.
  const int64_t big_tiles = count * ceil_div(m, 128) * ceil_div(n, 128);
  const bool big = m >= 128 && n >= 128 && big_tiles >= 2 * static_cast<int64_t>(sm_count(device));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const LowrankLaunch a{w_ptrs, left_ptrs, right_ptrs, count, m, n, k, decay, keys, indices,
                        stochastic, rounding_seed};
  switch (dtype) {
    case DType::kFloat32: launch_lowrank_for<float>(big, a, s); break;
    case DType::kBFloat16: launch_lowrank_for<__nv_bfloat16>(big, a, s); break;
    case DType::kFloat16: launch_lowrank_for<__half>(big, a, s); break;
  }
  check(cudaGetLastError(), "lowrank_update launch");
}

void gaussian_sketch(const int64_t* keys, const int64_t* offsets, const int64_t* omega_ptrs,
                     const int64_t* out_ptrs, int64_t count, int64_t m, int64_t n, int64_t q,
                     const uint64_t* seeds, const float* coeffs, int64_t n_seeds, bool transpose,
                     int device, void* stream) {
  const int64_t rows = transpose ? n : m;
  if (count == 0 || rows == 0 || q == 0) return;
  const DeviceGuard guard(device, "gaussian_sketch: select the tensors' device");
  // Column tile QT: the smallest of 32, 64, 128, 256 that holds q (256 beyond; every further
  // column tile generates A again). Row tile BR = 64 (TR = 4), halved while there are fewer
  // than two CTAs per SM (BR = 32 needs QT <= 128, BR = 16 needs QT <= 64), and QT halved
  // while there is less than one CTA per SM.
  int qt = 32;
  while (qt < 256 && qt < q) qt *= 2;
  int br = 64;
  const int64_t sms = sm_count(device);
  auto ctas = [&](int b, int t) { return count * ceil_div(rows, b) * ceil_div(q, t); };
  auto fits = [](int b, int t) { return b == 64 || (b == 32 && t <= 128) || (b == 16 && t <= 64); };
  for (;;) {
    if (ctas(br, qt) >= 2 * sms) break;
    if (br > 16 && fits(br / 2, qt)) br /= 2;
    else if (qt > 32 && ctas(br, qt) < sms) qt /= 2;
    else break;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define PGAP_SKETCH(BR, TQ)                                                                     \
  launch_sketch<BR, TQ>(keys, offsets, omega_ptrs, out_ptrs, count, m, n, q, seeds, coeffs, \
                        n_seeds, transpose, s)
  if (br == 64) {
    if (qt == 32) PGAP_SKETCH(64, 2);
    else if (qt == 64) PGAP_SKETCH(64, 4);
    else if (qt == 128) PGAP_SKETCH(64, 8);
    else PGAP_SKETCH(64, 16);
  } else if (br == 32) {
    if (qt == 32) PGAP_SKETCH(32, 2);
    else if (qt == 64) PGAP_SKETCH(32, 4);
    else PGAP_SKETCH(32, 8);
  } else {
    if (qt == 32) PGAP_SKETCH(16, 2);
    else PGAP_SKETCH(16, 4);
  }
#undef PGAP_SKETCH
  check(cudaGetLastError(), "gaussian_sketch launch");
}

}  // namespace cuda
}  // namespace pgap
