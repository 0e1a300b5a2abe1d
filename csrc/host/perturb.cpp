// Host entry point: picks the kernel for this CPU and spreads chunks over OpenMP threads.
#include "host/perturb.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace pgap {
namespace host {

namespace generic { void perturb_chunk(DType, DType, const TensorArgs&, const StreamArgs&, int64_t, int64_t); }
namespace avx2 { void perturb_chunk(DType, DType, const TensorArgs&, const StreamArgs&, int64_t, int64_t); }
namespace avx512 { void perturb_chunk(DType, DType, const TensorArgs&, const StreamArgs&, int64_t, int64_t); }

namespace {

using ChunkFn = void (*)(DType, DType, const TensorArgs&, const StreamArgs&, int64_t, int64_t);

bool cpu_has(const std::string& isa) {
  if (isa == "generic") return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  if (isa == "avx512")
    return cpu_has("avx2") && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
#endif
  return false;  // other architectures: the generic build (auto-vectorized for the baseline ISA)
}

ChunkFn chunk_fn_of(const std::string& isa) {
  if (isa == "avx512") return avx512::perturb_chunk;
  if (isa == "avx2") return avx2::perturb_chunk;
  return generic::perturb_chunk;
}

// Seconds one thread takes for a bf16 perturbation with stochastic rounding of kTimedElements
// elements (Philox, Box-Muller and the rounding words: every vectorized path), best of 3.
constexpr int64_t kTimedElements = 16 * kHostChunk;

double time_isa(const std::string& isa) {
  std::vector<uint16_t> data(kTimedElements, 0x3F80u);  // bf16 1.0
  const uint64_t seed = 12345u;
  const float coeff = 1e-3f;
  const TensorArgs ta{data.data(), data.data(), nullptr, kTimedElements, 0u, 7u};
  const StreamArgs sa{&seed, &coeff, 1, 1.0f, 0.0f, RoundingArgs{true, 99u}};
  const ChunkFn fn = chunk_fn_of(isa);
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t lo = 0; lo < kTimedElements; lo += kHostChunk)
      fn(DType::kBFloat16, DType::kBFloat16, ta, sa, lo, lo + kHostChunk);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

std::vector<std::pair<std::string, double>>& isa_timings() {
  static std::vector<std::pair<std::string, double>> timings;
  return timings;
}

// The fastest build this CPU runs, by measurement (a few ms, once per process): AVX-512 is not
// faster everywhere (some CPUs lower their clock for it, others split 512-bit operations in
// two). Every build gives the same bits, so the choice changes speed only.
std::string fastest_isa() {
  std::string best = "generic";
  double best_s = 1e30;
  for (const std::string& isa : supported_isas()) {
    const double s = time_isa(isa);
    isa_timings().emplace_back(isa, s);
    if (s < best_s) {
      best_s = s;
      best = isa;
    }
  }
  return best;
}

std::string& selected_isa() {
  static std::string isa = [] {
    const char* env = std::getenv("PGAP_HOST_ISA");
    if (env && *env && cpu_has(env)) return std::string(env);
    return fastest_isa();
  }();
  return isa;
}

ChunkFn chunk_fn() { return chunk_fn_of(selected_isa()); }

constexpr int64_t kParallelThreshold = 1 << 15;  // elements below which one thread is faster

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const char* isa : {"generic", "avx2", "avx512"})
    if (cpu_has(isa)) out.emplace_back(isa);
  return out;
}

std::string current_isa() { return selected_isa(); }

std::vector<std::pair<std::string, double>> isa_choice_timings() {
  selected_isa();
  return isa_timings();
}

void set_isa(const std::string& isa) {
  if (isa != "generic" && isa != "avx2" && isa != "avx512")
    throw std::invalid_argument("isa must be one of 'generic', 'avx2', 'avx512', got '" + isa + "'");
  if (!cpu_has(isa)) throw std::invalid_argument("this CPU does not support isa '" + isa + "'");
  selected_isa() = isa;
}

void perturb(DType dtype, DType src_dtype, const std::vector<TensorArgs>& tensors,
             const StreamArgs& stream, int num_threads) {
  struct Item {
    int32_t tensor;
    int64_t lo;
  };
  std::vector<Item> items;
  int64_t total = 0;
  for (size_t p = 0; p < tensors.size(); ++p) {
    total += tensors[p].numel;
    for (int64_t lo = 0; lo < tensors[p].numel; lo += kHostChunk)
      items.push_back(Item{static_cast<int32_t>(p), lo});
  }
  const ChunkFn fn = chunk_fn();
  const int64_t n_items = static_cast<int64_t>(items.size());
  const int threads = (total < kParallelThreshold || num_threads < 1) ? 1 : num_threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t k = 0; k < n_items; ++k) {
    const TensorArgs& ta = tensors[items[k].tensor];
    const int64_t lo = items[k].lo;
    const int64_t hi = (ta.numel - lo < kHostChunk) ? ta.numel : lo + kHostChunk;
    fn(dtype, src_dtype, ta, stream, lo, hi);
  }
}

}  // namespace host
}  // namespace pgap
