// Host low-rank ops, portable version: OpenMP over row tiles; tiles of A drawn by host::perturb.
#include "host/lowrank.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "host/perturb.h"
#include "pgap/normal.h"

namespace pgap {
namespace host {
namespace {

float load_value(DType dtype, const void* w, int64_t i) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(w)[i];
    case DType::kBFloat16:
      return bits_to_float(static_cast<uint32_t>(static_cast<const uint16_t*>(w)[i]) << 16);
    case DType::kFloat16: return static_cast<float>(static_cast<const _Float16*>(w)[i]);
  }
  return 0.0f;
}

void store_value(DType dtype, void* w, int64_t i, float f) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(w)[i] = f; break;
    case DType::kBFloat16: {
      const uint32_t u = float_to_bits(f);
      const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
      static_cast<uint16_t*>(w)[i] =
          static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
      break;
    }
    case DType::kFloat16: static_cast<_Float16*>(w)[i] = static_cast<_Float16>(f); break;
  }
}

constexpr int64_t kTileElements = 1 << 14;  // elements of A per generated tile

}  // namespace

void lowrank_update(DType dtype, void* w, int64_t m, int64_t n, const float* left,
                    const float* right, int64_t k, float decay, int num_threads) {
  const int threads = num_threads < 1 ? 1 : num_threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && m * n > 4096)
  for (int64_t a = 0; a < m; ++a) {
    const float* l = left + a * k;
    for (int64_t b = 0; b < n; ++b) {
      const float* r = right + b * k;
      float acc = 0.0f;
      for (int64_t t = 0; t < k; ++t) acc += l[t] * r[t];
      const float base = decay == 0.0f ? 0.0f : decay * load_value(dtype, w, a * n + b);
      store_value(dtype, w, a * n + b, base + acc);
    }
  }
}

void gaussian_sketch(int64_t m, int64_t n, uint64_t offset, uint32_t key, const uint64_t* seeds,
                     const float* coeffs, int64_t n_seeds, const float* omega, int64_t q,
                     bool transpose, float* out, int num_threads) {
  const int64_t out_rows = transpose ? n : m;
  std::fill(out, out + out_rows * q, 0.0f);
  if (m == 0 || n == 0 || q == 0) return;
  const StreamArgs stream{seeds, coeffs, n_seeds, 0.0f, 0.0f};
  const int threads = num_threads < 1 ? 1 : num_threads;
  // Rows of A per tile; a tile of columns [b0, b1) of those rows when rows are long.
  const int64_t cols = std::min<int64_t>(n, kTileElements);
  const int64_t rows = std::max<int64_t>(1, kTileElements / cols);
  const int64_t row_tiles = (m + rows - 1) / rows, col_tiles = (n + cols - 1) / cols;
  // Without transpose each row tile owns its output rows; with it, each column tile does.
  const int64_t outer = transpose ? col_tiles : row_tiles;
  const int64_t inner = transpose ? row_tiles : col_tiles;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> tile(static_cast<size_t>(rows * cols));
#pragma omp for schedule(dynamic, 1)
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t rt = transpose ? i : o, ct = transpose ? o : i;
        const int64_t a0 = rt * rows, a1 = std::min(m, a0 + rows);
        const int64_t b0 = ct * cols, b1 = std::min(n, b0 + cols);
        const int64_t w = b1 - b0;
        for (int64_t a = a0; a < a1; ++a) {  // draw row a, columns [b0, b1)
          const TensorArgs ta{tile.data() + (a - a0) * w, nullptr, w,
                              offset + static_cast<uint64_t>(a * n + b0), key};
          perturb(DType::kFloat32, {ta}, stream, 1);
        }
        for (int64_t a = a0; a < a1; ++a) {
          const float* t = tile.data() + (a - a0) * w;
          if (!transpose) {
            float* o_row = out + a * q;
            for (int64_t b = 0; b < w; ++b) {
              const float x = t[b];
              const float* om = omega + (b0 + b) * q;
#pragma omp simd
              for (int64_t c = 0; c < q; ++c) o_row[c] += x * om[c];
            }
          } else {
            const float* om = omega + a * q;
            for (int64_t b = 0; b < w; ++b) {
              const float x = t[b];
              float* o_row = out + (b0 + b) * q;
#pragma omp simd
              for (int64_t c = 0; c < q; ++c) o_row[c] += x * om[c];
            }
          }
        }
      }
    }
  }
}

}  // namespace host
}  // namespace pgap
