// Body of the host subspace perturbation, compiled once per instruction set.
//
// Included by lowrank_<isa>.cpp after lowrank_kernel.h, whose tiles, packing and micro-kernel it
// reuses: W_p <- decay*W_p + Xi_p*V_p^T is the low-rank update with L = Xi_p (m x r, the seeded
// sum of the stream) and R = V_p (n x r). Xi is never stored whole: a thread draws the kTileRows
// x r block of Xi of the W tile it works on (stream_sum, the perturb code: same bits) into a
// small buffer, and keeps it for the next tile of the same rows (tiles of a matrix are ordered
// row tile by row tile, handed out in contiguous ranges). Each element is one FMA chain over
// k = 0..r-1 in the same order whatever the tiling, so a row shard (offset i0*r) reproduces its
// rows of the whole matrix bit for bit, and the result does not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "host/lowrank.h"
#include "host/lowrank_kernel.h"

#ifndef PGAP_ISA_NS
#error "define PGAP_ISA_NS before including subspace_kernel.h"
#endif

namespace pgap {
namespace host {

namespace PGAP_ISA_NS {

// dst[e] = sum_j coeffs[j] * xi(seeds[j], key, g0 + e) for e in [0, count). Writes up to 3 floats
// before dst and 3 after dst + count. Pieces after the first start on a Philox block, so each
// piece's lead lands on values already final and only the last piece runs past count.
static void draw_span(const StreamArgs& sa, uint32_t key, uint64_t g0, int64_t count, float* dst) {
  for (int64_t e = 0; e < count;) {
    const uint64_t g = g0 + static_cast<uint64_t>(e);
    const int64_t shift = static_cast<int64_t>(g & 3u);
    const int64_t len = std::min<int64_t>(count - e, kHostChunk - shift);
    stream_sum(sa, key, g, len, dst + e - shift);
    e += len;
  }
}

struct SubspaceTile {
  int64_t p, r0, c0;  // matrix, first row, first column
};

template <class D>
static void subspace_tile(const SubspaceMatrix& mt, const SubspaceTile& tile, int64_t rows,
                          int64_t cols, const float* xi, const float* bpack, float* apack,
                          const StreamArgs& sa) {
  auto* w = static_cast<typename D::Storage*>(mt.w) + tile.r0 * mt.n + tile.c0;
  const uint64_t base = sa.rounding.stochastic ? rounding_base(sa.rounding.seed, mt.key) : 0u;
  const TileRounding tr = TileRounding{base, mt.rounding_index, mt.n}.at(tile.r0, tile.c0);
  with_store_flags<D>(sa.decay, sa.rounding.stochastic, [&](auto overwrite, auto stochastic) {
    update_tile<D, decltype(overwrite)::value, decltype(stochastic)::value>(
        w, mt.n, rows, cols, xi, mt.r, bpack, apack, sa.decay, tr);
  });
}

void subspace_perturb(const std::vector<SubspaceMatrix>& mats, const StreamArgs& sa,
                      int num_threads) {
  const int64_t count = static_cast<int64_t>(mats.size());
  std::vector<int64_t> nb(mats.size());
  int64_t work = 0, max_r = 1;
  for (int64_t p = 0; p < count; ++p) {
    nb[p] = tile_cols(mats[p].r);
    work += mats[p].m * mats[p].n * mats[p].r;
    max_r = std::max(max_r, mats[p].r);
  }
  int threads = num_threads < 1 ? 1 : num_threads;
  if (work < (int64_t{1} << 20)) threads = 1;  // too small to pay for a parallel region
  auto tiles_of = [&](int64_t p) {
    return ((mats[p].m + kTileRows - 1) / kTileRows) * ((mats[p].n + nb[p] - 1) / nb[p]);
  };
  auto total_tiles = [&] {
    int64_t t = 0;
    for (int64_t p = 0; p < count; ++p) t += mats[p].m > 0 && mats[p].n > 0 ? tiles_of(p) : 0;
    return t;
  };
  int64_t tiles = total_tiles();
  // Narrower tiles when there are too few to share out (the grid does not change any sum).
  while (tiles < 4 * threads) {
    bool narrower = false;
    for (int64_t p = 0; p < count; ++p) narrower = narrow_tiles(nb[p]) || narrower;
    if (!narrower) break;
    tiles = total_tiles();
  }
  std::vector<SubspaceTile> list;
  list.reserve(static_cast<size_t>(tiles));
  for (int64_t p = 0; p < count; ++p)
    for (int64_t r0 = 0; r0 < mats[p].m; r0 += kTileRows)
      for (int64_t c0 = 0; c0 < mats[p].n; c0 += nb[p]) list.push_back(SubspaceTile{p, r0, c0});
  if (threads > tiles) threads = static_cast<int>(std::max<int64_t>(tiles, 1));
  const int64_t max_nb = count ? *std::max_element(nb.begin(), nb.end()) : kNR;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    FloatBuffer bpack((max_nb + kNR) * max_r), apack(kMR * max_r), xbuf(kTileRows * max_r + 8);
    float* const xi = xbuf.p + 4;  // draw_span writes up to 3 floats before and after
    SubspaceTile drawn{-1, -1, 0};  // the rows whose Xi is in xi
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const SubspaceTile& tile = list[static_cast<size_t>(t)];
      const SubspaceMatrix& mt = mats[static_cast<size_t>(tile.p)];
      const int64_t rows = std::min(kTileRows, mt.m - tile.r0);
      const int64_t cols = std::min(nb[tile.p], mt.n - tile.c0);
      if (tile.p != drawn.p || tile.r0 != drawn.r0) {
        draw_span(sa, mt.key, mt.offset + static_cast<uint64_t>(tile.r0 * mt.r), rows * mt.r, xi);
        drawn = tile;
      }
      pack_right(mt.basis, mt.r, tile.c0, cols, bpack.p);
      switch (mt.dtype) {
        case DType::kFloat32: subspace_tile<F32>(mt, tile, rows, cols, xi, bpack.p, apack.p, sa); break;
        case DType::kBFloat16: subspace_tile<BF16>(mt, tile, rows, cols, xi, bpack.p, apack.p, sa); break;
        case DType::kFloat16: subspace_tile<F16>(mt, tile, rows, cols, xi, bpack.p, apack.p, sa); break;
      }
    }
  }
}

}  // namespace PGAP_ISA_NS
}  // namespace host
}  // namespace pgap
