// Host (CPU) fused perturbation: OpenMP over chunks, SIMD kernel chosen by CPU features.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "pgap/perturb_args.h"

namespace pgap {
namespace host {

constexpr int64_t kHostChunk = 4096;  // elements per work item (multiple of 4)
constexpr int64_t kHostChunkBlocks = kHostChunk / 4 + 1;  // Philox blocks a chunk can touch
constexpr int64_t kHostRademacherBlocks = kHostChunk / 128 + 1;  // Rademacher blocks it can touch
// Floats of a chunk's stream buffer: the chunk plus the head of its first block (up to 127 for
// the Rademacher stream's 128-element blocks, 3 for the Gaussian's) and the tail of its last.
constexpr int64_t kHostAccFloats = 128 * kHostRademacherBlocks;

// Applies the perturbation to every tensor of one dtype group (see perturb_args.h): the written
// tensors (data, minus) of `dtype`, their sources and means of `src_dtype` (== dtype in place;
// another dtype only out of place and rounded to nearest).
void perturb(DType dtype, DType src_dtype, const std::vector<TensorArgs>& tensors,
             const StreamArgs& stream, int num_threads);

std::vector<std::string> supported_isas();  // "generic", "avx2", "avx512" this CPU can run
std::string current_isa();                  // the one in use (the fastest, measured once; or PGAP_HOST_ISA)
// (isa, seconds) of the measurement that chose it: one thread, 65536 bf16 elements with
// stochastic rounding, best of 3; empty when PGAP_HOST_ISA chose
std::vector<std::pair<std::string, double>> isa_choice_timings();
void set_isa(const std::string& isa);       // for tests and benchmarks

}  // namespace host
}  // namespace pgap
