// Host low-rank and subspace entry points: run the kernels of the instruction set selected for
// perturb (host::current_isa(), PGAP_HOST_ISA, set_isa); the bodies are in lowrank_kernel.h and
// subspace_kernel.h.
#include "host/lowrank.h"

#include <string>

#include "host/perturb.h"

namespace pgap {
namespace host {

#define PGAP_DECLARE_LOWRANK(ns)                                                               \
  namespace ns {                                                                               \
  void lowrank_update(DType, void*, int64_t, int64_t, const float*, const float*, int64_t,     \
                      float, const RoundingArgs&, uint32_t, uint64_t, int);                    \
  void gaussian_sketch(int64_t, int64_t, uint64_t, uint32_t, const uint64_t*, const float*,    \
                       int64_t, const float*, int64_t, bool, float*, int);                     \
  void subspace_perturb(const std::vector<SubspaceMatrix>&, const StreamArgs&, int);           \
  }
PGAP_DECLARE_LOWRANK(generic)
PGAP_DECLARE_LOWRANK(avx2)
PGAP_DECLARE_LOWRANK(avx512)
#undef PGAP_DECLARE_LOWRANK

void lowrank_update(DType dtype, void* w, int64_t m, int64_t n, const float* left,
                    const float* right, int64_t k, float decay, const RoundingArgs& rounding,
                    uint32_t key, uint64_t index, int num_threads) {
  const std::string isa = current_isa();
  if (isa == "avx512")
    avx512::lowrank_update(dtype, w, m, n, left, right, k, decay, rounding, key, index, num_threads);
  else if (isa == "avx2")
    avx2::lowrank_update(dtype, w, m, n, left, right, k, decay, rounding, key, index, num_threads);
  else
    generic::lowrank_update(dtype, w, m, n, left, right, k, decay, rounding, key, index, num_threads);
}

void gaussian_sketch(int64_t m, int64_t n, uint64_t offset, uint32_t key, const uint64_t* seeds,
                     const float* coeffs, int64_t n_seeds, const float* omega, int64_t q,
                     bool transpose, float* out, int num_threads) {
  const std::string isa = current_isa();
  if (isa == "avx512")
    avx512::gaussian_sketch(m, n, offset, key, seeds, coeffs, n_seeds, omega, q, transpose, out,
                            num_threads);
  else if (isa == "avx2")
    avx2::gaussian_sketch(m, n, offset, key, seeds, coeffs, n_seeds, omega, q, transpose, out,
                          num_threads);
  else
    generic::gaussian_sketch(m, n, offset, key, seeds, coeffs, n_seeds, omega, q, transpose, out,
                             num_threads);
}

void subspace_perturb(const std::vector<SubspaceMatrix>& mats, const StreamArgs& stream,
                      int num_threads) {
  const std::string isa = current_isa();
  if (isa == "avx512") avx512::subspace_perturb(mats, stream, num_threads);
  else if (isa == "avx2") avx2::subspace_perturb(mats, stream, num_threads);
  else generic::subspace_perturb(mats, stream, num_threads);
}

}  // namespace host
}  // namespace pgap
