// Where one host perturbation pass spends its time, phase by phase (bench/kernels/stream_breakdown.py
// compiles and runs it once per instruction set): Philox words, Box-Muller into the chunk buffer,
// and the apply loop over the tensor, each timed over a 2^24-element float32 tensor in
// kHostChunk chunks, as host/perturb_kernel.h runs them (one thread). Then the same for the
// Rademacher stream: its Philox words (one block per 128 elements), the sign expansion into the
// chunk buffer, and the apply loop.
#ifndef PGAP_ISA_NS
#error "compile with -DPGAP_ISA_NS=<isa> and that ISA's flags"
#endif
#include "host/perturb_kernel.h"
#include <chrono>
#include <cstdio>
#include <vector>
using namespace pgap;
using namespace pgap::host;
using namespace pgap::host::PGAP_ISA_NS;
constexpr int64_t N = 1 << 24;
alignas(64) static float acc[kHostAccFloats];

// Seconds in each phase of a pass over t, chunk by chunk, as the kernel runs them: draw(lo) the
// chunk's Philox words, expand() them into acc, then the apply loop (the third of 3 passes).
template <class Draw, class Expand>
static void time_pass(std::vector<float>& t, Draw draw, Expand expand, double (&s)[3]) {
  for (int rep = 0; rep < 3; ++rep) {
    s[0] = s[1] = s[2] = 0;
    for (int64_t lo = 0; lo < N; lo += kHostChunk) {
      auto a = std::chrono::steady_clock::now();
      draw(lo);
      auto b = std::chrono::steady_clock::now();
      expand();
      auto c = std::chrono::steady_clock::now();
      float* tt = t.data() + lo;
#pragma omp simd
      for (int64_t l = 0; l < kHostChunk; ++l) tt[l] = tt[l] + acc[l];
      auto d = std::chrono::steady_clock::now();
      s[0] += std::chrono::duration<double>(b - a).count();
      s[1] += std::chrono::duration<double>(c - b).count();
      s[2] += std::chrono::duration<double>(d - c).count();
    }
  }
}

int main() {
  std::vector<float> t(N, 1.0f);
  alignas(64) static uint32_t w0[kHostChunkBlocks], w1[kHostChunkBlocks], w2[kHostChunkBlocks], w3[kHostChunkBlocks];
  double g[3], r[3];
  time_pass(
      t, [&](int64_t lo) { philox_words(1234, 7, 0, lo >> 2, kHostChunk / 4, w0, w1, w2, w3); },
      [&] {
#pragma omp simd
        for (int64_t j = 0; j < kHostChunk / 4; ++j) {
          float z0, z1, z2, z3;
          box_muller(w0[j], w1[j], z0, z1);
          box_muller(w2[j], w3[j], z2, z3);
          acc[4 * j + 0] = 1e-3f * z0; acc[4 * j + 1] = 1e-3f * z1;
          acc[4 * j + 2] = 1e-3f * z2; acc[4 * j + 3] = 1e-3f * z3;
        }
      },
      g);
  printf("philox_ms=%.2f boxmuller_ms=%.2f apply_ms=%.2f\n", g[0] * 1e3, g[1] * 1e3, g[2] * 1e3);
  alignas(64) static uint32_t rw[4][kHostRademacherBlocks];
  time_pass(
      t,
      [&](int64_t lo) {
        philox_words(1234, 7, kRademacherDomain, lo >> 7, kHostChunk / 128, rw[0], rw[1], rw[2], rw[3]);
      },
      [&] { expand_signs<true>(rw, kHostChunk / 128, 1e-3f, acc); }, r);
  printf("rademacher_philox_ms=%.2f signs_ms=%.2f rademacher_apply_ms=%.2f\n", r[0] * 1e3,
         r[1] * 1e3, r[2] * 1e3);
  return t[123] > 0 ? 0 : 1;
}
