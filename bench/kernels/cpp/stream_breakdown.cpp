// Where one host perturbation pass spends its time, phase by phase (bench/kernels/stream_breakdown.py
// compiles and runs it once per instruction set): Philox words, Box-Muller into the chunk buffer,
// and the apply loop over the tensor, each timed over a 2^24-element float32 tensor in
// kHostChunk chunks, as host/perturb_kernel.h runs them (one thread).
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
int main() {
  const int64_t N = 1 << 24;
  std::vector<float> t(N, 1.0f);
  alignas(64) static uint32_t w0[kHostChunkBlocks], w1[kHostChunkBlocks], w2[kHostChunkBlocks], w3[kHostChunkBlocks];
  alignas(64) static float acc[kHostChunk + 8];
  double tp = 0, tb = 0, ta = 0;
  for (int rep = 0; rep < 3; ++rep) {
    tp = tb = ta = 0;
    for (int64_t lo = 0; lo < N; lo += kHostChunk) {
      auto a = std::chrono::steady_clock::now();
      philox_words(1234, 7, 0, lo >> 2, kHostChunk / 4, w0, w1, w2, w3);
      auto b = std::chrono::steady_clock::now();
#pragma omp simd
      for (int64_t j = 0; j < kHostChunk / 4; ++j) {
        float z0, z1, z2, z3;
        box_muller(w0[j], w1[j], z0, z1);
        box_muller(w2[j], w3[j], z2, z3);
        acc[4 * j + 0] = 1e-3f * z0; acc[4 * j + 1] = 1e-3f * z1;
        acc[4 * j + 2] = 1e-3f * z2; acc[4 * j + 3] = 1e-3f * z3;
      }
      auto c = std::chrono::steady_clock::now();
      float* tt = t.data() + lo;
#pragma omp simd
      for (int64_t l = 0; l < kHostChunk; ++l) tt[l] = tt[l] + acc[l];
      auto d = std::chrono::steady_clock::now();
      tp += std::chrono::duration<double>(b - a).count();
      tb += std::chrono::duration<double>(c - b).count();
      ta += std::chrono::duration<double>(d - c).count();
    }
  }
  printf("philox_ms=%.2f boxmuller_ms=%.2f apply_ms=%.2f\n", tp * 1e3, tb * 1e3, ta * 1e3);
  return t[123] > 0 ? 0 : 1;
}
