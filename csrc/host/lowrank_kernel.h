// Body of the host low-rank kernels, compiled once per instruction set.
//
// Included by lowrank_<isa>.cpp with PGAP_ISA_NS defined; each translation unit is built with
// its own -m flags, and host/lowrank.cpp picks the one of the ISA selected for perturb.
//
// Both ops are BLIS-style products with a register-blocked micro-kernel (kMR rows x kNR columns
// of float32 accumulators, kNR = kNV vectors) that runs over the whole inner dimension:
// * lowrank_update: W <- decay*W + L*R^T. Per tile of W (kTileRows x nb, nb sized so the packed
//   R panel stays in L2), R rows are packed into kNR-wide panels and each kMR-row panel of L into
//   a small buffer; the micro-kernel's epilogue loads the W tile, applies decay, adds, rounds
//   once to W's dtype and stores in place. Tiles lie on a fixed grid and every element is summed
//   in the same order, so the result does not depend on the thread count.
// * gaussian_sketch: tiles of the implicit A are drawn by stream_sum (the perturb code, same
//   bits) into an L2-sized buffer and multiplied with kNR-wide panels of omega; a thread owns
//   its output rows (row blocks of A, or column blocks when transposed).
// FMAs are explicit intrinsics (the file is built with -ffp-contract=off like every host file:
// the normals must stay bit-exact).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "host/simd_kernel.h"
#include "host/stream_kernel.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including lowrank_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// Register blocking of the micro-kernel (the SIMD layer, VF and kNR among it: host/simd_kernel.h).
#if defined(__AVX512F__)
constexpr int kMR = 12;  // 24 accumulators + 2 panel vectors of 32 zmm registers
#else
constexpr int kMR = 6;  // 12 accumulators + 2 panel vectors + 1 broadcast of 16 ymm/xmm registers
#endif

// acc = sum_p a(i, p) * b[p][0, kNR) over p in [0, kc): a(i, p) = a[i*a_rs + p*a_cs], b a
// packed panel of kNR floats per p.
static inline __attribute__((always_inline)) void micro_kernel(
    int64_t kc, const float* __restrict a, int64_t a_rs, int64_t a_cs, const float* __restrict b,
    VF (&acc)[kMR][kNV]) {
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[i][v] = vzero();
#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; ++p) {
    VF bv[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) bv[v] = vload(b + p * kNR + v * kVW);
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      const VF ai = vbcast(a[i * a_rs + p * a_cs]);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[i][v] = vfma(ai, bv[v], acc[i][v]);
    }
  }
}

// 64-byte aligned float buffer, zero-filled.
struct FloatBuffer {
  float* p = nullptr;
  explicit FloatBuffer(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
  }
  ~FloatBuffer() { std::free(p); }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
};

// ---- lowrank_update ------------------------------------------------------------------------

constexpr int64_t kTileRows = 96;              // rows of W per tile (a multiple of kMR)
constexpr int64_t kPanelBytes = 160 * 1024;    // packed R per tile, kept in L2
constexpr int64_t kMaxTileCols = 2048;

// bpack[c / kNR][p][c % kNR] = right[(c0 + c)*k + p] for c in [0, nb), zero past nb.
static void pack_right(const float* __restrict right, int64_t k, int64_t c0, int64_t nb,
                       float* __restrict bpack) {
  const int64_t panels = (nb + kNR - 1) / kNR;
  for (int64_t jp = 0; jp < panels; ++jp) {
    float* dst = bpack + jp * k * kNR;
    for (int jj = 0; jj < kNR; ++jj) {
      const int64_t c = jp * kNR + jj;
      if (c < nb) {
        const float* src = right + (c0 + c) * k;
        for (int64_t p = 0; p < k; ++p) dst[p * kNR + jj] = src[p];
      } else {
        for (int64_t p = 0; p < k; ++p) dst[p * kNR + jj] = 0.0f;
      }
    }
  }
}

// apack[p][i] = left[(r0 + i)*k + p] for i < mr, zero for i in [mr, kMR).
static void pack_left(const float* __restrict left, int64_t k, int64_t r0, int64_t mr,
                      float* __restrict apack) {
  for (int i = 0; i < kMR; ++i) {
    if (i < mr) {
      const float* src = left + (r0 + i) * k;
      for (int64_t p = 0; p < k; ++p) apack[p * kMR + i] = src[p];
    } else {
      for (int64_t p = 0; p < k; ++p) apack[p * kMR + i] = 0.0f;
    }
  }
}

// Where the stochastic rounding of a block of W reads its words (pgap/rounding.h): element
// (i, j) of the block rounds with the word of element index + i*ld + j under the hash state
// base = rounding_base(rounding seed, key).
struct TileRounding {
  uint64_t base;   // rounding_base(rounding seed, key) of W
  uint64_t index;  // rounding index of the block's element (0, 0)
  int64_t ld;      // rounding-index distance between rows (W's n)
  TileRounding at(int64_t i, int64_t j) const {  // the block starting at element (i, j)
    return TileRounding{base, index + static_cast<uint64_t>(i * ld + j), ld};
  }
};

// W tile (rows [0, mr), columns [0, nr), row stride ldw) <- decay*W + acc, one rounding: to
// nearest, or (kStochastic) with the rounding words of `tr`.
template <class D, bool kOverwrite, bool kStochastic>
static inline __attribute__((always_inline)) void store_tile(
    typename D::Storage* __restrict w, int64_t ldw, int64_t mr, int64_t nr, float decay,
    VF (&acc)[kMR][kNV], const TileRounding& tr) {
#if defined(__AVX2__) || defined(__AVX512F__)
  if (mr == kMR && nr == kNR) {  // full tiles in vectors
    const VF vd = vbcast(decay);
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      typename D::Storage* row = w + i * ldw;
      VF x[kNV];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v)
        x[v] = kOverwrite ? acc[i][v] : vfma(vd, vload_w(row + v * kVW), acc[i][v]);
      if constexpr (kStochastic) {
        store_row_stochastic(row, x, row_words(tr.base, tr.at(i, 0).index));
      } else {
#pragma GCC unroll 4
        for (int v = 0; v < kNV; ++v) vstore_w(row + v * kVW, x[v]);
      }
    }
    return;
  }
#endif
  alignas(64) float t[kMR][kNR];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) vstore(&t[i][v * kVW], acc[i][v]);
  for (int64_t i = 0; i < mr; ++i) {
    typename D::Storage* row = w + i * ldw;
    alignas(64) uint16_t words[kNR + 8];
    int64_t shift = 0;
    if (kStochastic) shift = rounding_words(tr.base, tr.at(i, 0).index, nr, words);
    for (int64_t j = 0; j < nr; ++j) {
      const float v = kOverwrite ? t[i][j] : sfma(decay, D::load(row[j]), t[i][j]);
      row[j] = kStochastic ? D::store_stochastic(v, words[shift + j]) : D::store(v);
    }
  }
}

// W tile (rows x cols at w, row stride ldw) <- decay*W + L*R^T, one rounding: L is the tile's
// rows x k block (row-major, row stride k), bpack the tile's columns of R packed by pack_right.
// apack: kMR*k floats of scratch for the last, partial micro-panel. `tr`: the rounding of the
// tile's element (0, 0) (used when kStochastic).
template <class D, bool kOverwrite, bool kStochastic>
static void update_tile(typename D::Storage* w, int64_t ldw, int64_t rows, int64_t cols,
                        const float* left, int64_t k, const float* bpack, float* apack,
                        float decay, const TileRounding& tr) {
  for (int64_t ir = 0; ir < rows; ir += kMR) {
    const int64_t mr = std::min<int64_t>(kMR, rows - ir);
    // Full panels read L in place (kMR row streams); the last, partial one is zero-padded.
    const float* ap = left + ir * k;
    int64_t a_rs = k, a_cs = 1;
    if (mr < kMR) {
      pack_left(left, k, ir, mr, apack);
      ap = apack, a_rs = 1, a_cs = kMR;
    }
    typename D::Storage* wrow = w + ir * ldw;
    for (int64_t jr = 0; jr < cols; jr += kNR) {
      VF acc[kMR][kNV];
      if (!kOverwrite && jr + kNR < cols)  // the next W tile, read in the next epilogue
        for (int i = 0; i < kMR; ++i) __builtin_prefetch(wrow + i * ldw + jr + kNR, 1, 3);
      micro_kernel(k, ap, a_rs, a_cs, bpack + jr * k, acc);
      store_tile<D, kOverwrite, kStochastic>(wrow + jr, ldw, mr, std::min<int64_t>(kNR, cols - jr),
                                             decay, acc, tr.at(ir, jr));
    }
  }
}

// Columns of a W tile for inner size k: the packed R panel stays in L2.
static int64_t tile_cols(int64_t k) {
  const int64_t nb = kPanelBytes / (static_cast<int64_t>(sizeof(float)) * k) / kNR * kNR;
  return std::min<int64_t>(std::max<int64_t>(nb, kNR), kMaxTileCols);
}

// A narrower tile width, while there are fewer than 4 tiles per thread (false at kNR).
static bool narrow_tiles(int64_t& nb) {
  if (nb <= kNR) return false;
  nb = std::max<int64_t>(kNR, (nb / 2 + kNR - 1) / kNR * kNR);
  return true;
}

template <class D, bool kOverwrite, bool kStochastic>
static void lowrank_typed(typename D::Storage* w, int64_t m, int64_t n, const float* left,
                          const float* right, int64_t k, float decay, const TileRounding& tr,
                          int num_threads) {
  int64_t nb = tile_cols(k);
  const int64_t tiles_m = (m + kTileRows - 1) / kTileRows;
  int64_t tiles_n = (n + nb - 1) / nb;
  int threads = num_threads < 1 ? 1 : num_threads;
  if (m * n * k < (int64_t{1} << 20)) threads = 1;  // too small to pay for a parallel region
  // Narrower tiles when there are too few to share out (the grid does not change any sum).
  while (tiles_m * tiles_n < 4 * threads && narrow_tiles(nb)) tiles_n = (n + nb - 1) / nb;
  const int64_t tiles = tiles_m * tiles_n;
  if (threads > tiles) threads = static_cast<int>(tiles);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    FloatBuffer bpack((nb + kNR) * k), apack(kMR * k);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = (t / tiles_n) * kTileRows, c0 = (t % tiles_n) * nb;
      const int64_t rows = std::min(kTileRows, m - r0), cols = std::min(nb, n - c0);
      pack_right(right, k, c0, cols, bpack.p);
      update_tile<D, kOverwrite, kStochastic>(w + r0 * n + c0, n, rows, cols, left + r0 * k, k,
                                              bpack.p, apack.p, decay, tr.at(r0, c0));
    }
  }
}

// Calls f(kOverwrite, kStochastic) as std::integral_constant<bool, ...> values: overwrite when
// decay == 0, stochastic rounding when asked for and D is a 16-bit type.
template <class D, class F>
static void with_store_flags(float decay, bool stochastic, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  if constexpr (!std::is_same<D, F32>::value) {
    if (stochastic) {
      if (decay == 0.0f) f(T{}, T{}); else f(N{}, T{});
      return;
    }
  }
  if (decay == 0.0f) f(T{}, N{}); else f(N{}, N{});
}

template <class D>
static void lowrank_dispatch(void* w, int64_t m, int64_t n, const float* left, const float* right,
                             int64_t k, float decay, const RoundingArgs& rounding, uint32_t key,
                             uint64_t index, int num_threads) {
  auto* wt = static_cast<typename D::Storage*>(w);
  const TileRounding tr{rounding.stochastic ? rounding_base(rounding.seed, key) : 0u, index, n};
  with_store_flags<D>(decay, rounding.stochastic, [&](auto overwrite, auto stochastic) {
    lowrank_typed<D, decltype(overwrite)::value, decltype(stochastic)::value>(
        wt, m, n, left, right, k, decay, tr, num_threads);
  });
}

void lowrank_update(DType dtype, void* w, int64_t m, int64_t n, const float* left,
                    const float* right, int64_t k, float decay, const RoundingArgs& rounding,
                    uint32_t key, uint64_t index, int num_threads) {
  if (m <= 0 || n <= 0) return;
  switch (dtype) {
    case DType::kFloat32:
      lowrank_dispatch<F32>(w, m, n, left, right, k, decay, rounding, key, index, num_threads);
      break;
    case DType::kBFloat16:
      lowrank_dispatch<BF16>(w, m, n, left, right, k, decay, rounding, key, index, num_threads);
      break;
    case DType::kFloat16:
      lowrank_dispatch<F16>(w, m, n, left, right, k, decay, rounding, key, index, num_threads);
      break;
  }
}

// ---- gaussian_sketch -----------------------------------------------------------------------

constexpr int64_t kSketchRows = 4 * kMR;   // rows of A per block (transpose == false)
constexpr int64_t kSketchCols = 1024;      // columns of A per generated tile (transpose == false)
constexpr int64_t kSketchTRows = 48;       // rows of A per generated tile (transpose == true)
constexpr int64_t kSketchTCols = 384;      // columns of A per block (transpose == true), % kMR == 0
constexpr int64_t kTileLead = 4;   // writable floats before a tile row (stream_sum's shift)
constexpr int64_t kTilePad = kTileLead + 36;  // per tile row: kTileLead before, 36 after
static_assert(kSketchTCols % kMR == 0, "column blocks must hold whole micro-panels");
static_assert(kSketchCols + 32 <= kHostChunk && kSketchTCols + 32 <= kHostChunk,
              "stream_sum limit");

// tile_row[l] = A[a, b0 + l] for l in [0, len); writes up to kTileLead floats before tile_row
// and 36 after tile_row + len. With kWhole, the Philox blocks drawn are rounded up to a whole
// number of 8-block AVX2 groups (extra stream values past len, not used, instead of a slow
// scalar tail: worth it for short rows).
template <bool kWhole>
static inline void draw_row(const StreamArgs& sa, uint32_t key, uint64_t offset, int64_t n,
                            int64_t a, int64_t b0, int64_t len, float* tile_row) {
  const uint64_t g = offset + static_cast<uint64_t>(a * n + b0);
  const int64_t shift = static_cast<int64_t>(g & 3u);
  if (kWhole) {
    const int64_t nb = (shift + len + 3) / 4;
    len = (nb + 7) / 8 * 32 - shift;
  }
  stream_sum(sa, key, g, len, tile_row - shift);
}

// c[i][0, kNR) += acc[i] for i < kMR (c has row stride ldc).
static inline __attribute__((always_inline)) void add_tile(float* __restrict c, int64_t ldc,
                                                           VF (&acc)[kMR][kNV]) {
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v)
      vstore(c + i * ldc + v * kVW, vadd(vload(c + i * ldc + v * kVW), acc[i][v]));
}

void gaussian_sketch(int64_t m, int64_t n, uint64_t offset, uint32_t key, const uint64_t* seeds,
                     const float* coeffs, int64_t n_seeds, const float* omega, int64_t q,
                     bool transpose, float* out, int num_threads) {
  const int64_t out_rows = transpose ? n : m, inner = transpose ? m : n;
  if (out_rows <= 0 || q <= 0) return;
  if (inner <= 0) {
    std::fill(out, out + out_rows * q, 0.0f);
    return;
  }
  const StreamArgs sa{seeds, coeffs, n_seeds, 0.0f, 0.0f};
  const int64_t panels = (q + kNR - 1) / kNR, ldc = panels * kNR;
  // omega packed into kNR-column panels: opack[jp][row][kNR], zero past column q.
  FloatBuffer opack(panels * inner * kNR);
  const int64_t block = transpose ? kSketchTCols : kSketchRows;
  const int64_t blocks = (out_rows + block - 1) / block;
  int threads = num_threads < 1 ? 1 : num_threads;
  if (m * n < (int64_t{1} << 15)) threads = 1;
  if (threads > blocks) threads = static_cast<int>(blocks);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < inner; ++r)
      for (int64_t jp = 0; jp < panels; ++jp) {
        float* dst = opack.p + (jp * inner + r) * kNR;
        for (int64_t c = 0; c < kNR; ++c)
          dst[c] = jp * kNR + c < q ? omega[r * q + jp * kNR + c] : 0.0f;
      }
    // (implicit barrier: opack is complete)
    const int64_t tile_rows = transpose ? kSketchTRows : kSketchRows;
    const int64_t tile_cols = transpose ? kSketchTCols : kSketchCols;
    const int64_t ts = tile_cols + kTilePad;  // tile row stride; row i at kTileLead + i*ts
    FloatBuffer tile(tile_rows * ts), cbuf(block * ldc);
    float* const t0 = tile.p + kTileLead;
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t o0 = blk * block, rows = std::min(block, out_rows - o0);
      std::fill(cbuf.p, cbuf.p + block * ldc, 0.0f);
      if (!transpose) {
        // Output rows = rows [o0, o0 + rows) of A; inner dimension = columns of A.
        for (int64_t b0 = 0; b0 < n; b0 += kSketchCols) {
          const int64_t w = std::min(kSketchCols, n - b0);
          for (int64_t i = 0; i < rows; ++i) draw_row<false>(sa, key, offset, n, o0 + i, b0, w, t0 + i * ts);
          for (int64_t jp = 0; jp < panels; ++jp) {
            const float* bp = opack.p + (jp * inner + b0) * kNR;
            for (int64_t ir = 0; ir < rows; ir += kMR) {
              VF acc[kMR][kNV];
              micro_kernel(w, t0 + ir * ts, ts, 1, bp, acc);
              add_tile(cbuf.p + ir * ldc + jp * kNR, ldc, acc);
            }
          }
        }
      } else {
        // Output rows = columns [o0, o0 + rows) of A; inner dimension = rows of A.
        for (int64_t a0 = 0; a0 < m; a0 += kSketchTRows) {
          const int64_t h = std::min(kSketchTRows, m - a0);
          for (int64_t i = 0; i < h; ++i) draw_row<true>(sa, key, offset, n, a0 + i, o0, rows, t0 + i * ts);
          for (int64_t jp = 0; jp < panels; ++jp) {
            const float* bp = opack.p + (jp * inner + a0) * kNR;
            for (int64_t ir = 0; ir < rows; ir += kMR) {
              VF acc[kMR][kNV];
              micro_kernel(h, t0 + ir, 1, ts, bp, acc);
              add_tile(cbuf.p + ir * ldc + jp * kNR, ldc, acc);
            }
          }
        }
      }
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(out + (o0 + i) * q, cbuf.p + i * ldc, static_cast<size_t>(q) * sizeof(float));
    }
  }
}

}  // namespace PGAP_ISA_NS
}  // namespace host
}  // namespace pgap
