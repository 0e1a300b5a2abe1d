// pybind11 module pgap_kernels._C: raw pointers, sizes and stream handles only (no libtorch).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "host/lowrank.h"
#include "host/perturb.h"
#include "pgap/normal.h"
#include "pgap/perturb_args.h"
#include "pgap/rademacher.h"
#include "pgap/rounding.h"
#ifdef PGAP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/lowrank.h"
#include "cuda/perturb.h"
#include "cuda/subspace.h"
#endif

namespace py = pybind11;
using namespace pgap;

namespace {

DType to_dtype(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("dtype code must be 0 (f32), 1 (bf16) or 2 (f16)");
  return static_cast<DType>(code);
}

// The sources' dtype of a perturbation group: dtype itself (src_code -1), or another one for an
// out-of-place copy, which is rounded to nearest.
DType to_src_dtype(DType dtype, int src_code, bool stochastic) {
  const DType src = src_code < 0 ? dtype : to_dtype(src_code);
  if (src != dtype && stochastic)
    throw std::invalid_argument("a copy into another dtype is rounded to nearest; stochastic rounding refused");
  return src;
}

Distribution to_distribution(int code) {
  if (code < 0 || code > 1)
    throw std::invalid_argument("distribution code must be 0 (gaussian) or 1 (rademacher)");
  return static_cast<Distribution>(code);
}

void host_perturb(int dtype, const std::vector<uintptr_t>& data, const std::vector<uintptr_t>& src,
                  const std::vector<uintptr_t>& mean, const std::vector<int64_t>& numel,
                  const std::vector<uint64_t>& offset, const std::vector<uint32_t>& key,
                  const std::vector<uint64_t>& seeds, const std::vector<float>& coeffs, float decay,
                  float mean_coeff, bool stochastic, uint64_t rounding_seed, int distribution,
                  int num_threads, const std::vector<uintptr_t>& minus, int src_dtype) {
  const size_t n = data.size();
  if (src.size() != n || mean.size() != n || numel.size() != n || offset.size() != n ||
      key.size() != n || (!minus.empty() && minus.size() != n))
    throw std::invalid_argument("per-tensor argument lists must have equal lengths");
  if (!minus.empty() && stochastic)
    throw std::invalid_argument("minus copies are rounded to nearest; stochastic rounding refused");
  if (seeds.size() != coeffs.size()) throw std::invalid_argument("seeds and coeffs differ in length");
  const DType dt = to_dtype(dtype);
  const DType src_dt = to_src_dtype(dt, src_dtype, stochastic);
  if (src_dt != dt)
    for (size_t p = 0; p < n; ++p)
      if (src[p] == data[p]) throw std::invalid_argument("in place needs src_dtype == dtype");
  const Distribution dist = to_distribution(distribution);
  std::vector<TensorArgs> tensors(n);
  for (size_t p = 0; p < n; ++p)
    tensors[p] = TensorArgs{reinterpret_cast<void*>(data[p]), reinterpret_cast<const void*>(src[p]),
                            reinterpret_cast<const void*>(mean[p]), numel[p], offset[p], key[p],
                            minus.empty() ? nullptr : reinterpret_cast<void*>(minus[p])};
  const StreamArgs stream{seeds.data(), coeffs.data(), static_cast<int64_t>(seeds.size()), decay,
                          mean_coeff, RoundingArgs{stochastic, rounding_seed}, dist};
  py::gil_scoped_release release;
  host::perturb(dt, src_dt, tensors, stream, num_threads);
}

void host_lowrank_update(int dtype, uintptr_t w, int64_t m, int64_t n, uintptr_t left,
                         uintptr_t right, int64_t k, float decay, bool stochastic,
                         uint64_t rounding_seed, uint32_t key, uint64_t index, int num_threads) {
  const DType dt = to_dtype(dtype);
  if (m < 0 || n < 0 || k < 1) throw std::invalid_argument("need m, n >= 0 and k >= 1");
  py::gil_scoped_release release;
  host::lowrank_update(dt, reinterpret_cast<void*>(w), m, n, reinterpret_cast<const float*>(left),
                       reinterpret_cast<const float*>(right), k, decay,
                       RoundingArgs{stochastic, rounding_seed}, key, index, num_threads);
}

void host_gaussian_sketch(int64_t m, int64_t n, uint64_t offset, uint32_t key,
                          const std::vector<uint64_t>& seeds, const std::vector<float>& coeffs,
                          uintptr_t omega, int64_t q, bool transpose, uintptr_t out,
                          int num_threads) {
  if (seeds.size() != coeffs.size()) throw std::invalid_argument("seeds and coeffs differ in length");
  if (m < 0 || n < 0 || q < 0) throw std::invalid_argument("need m, n, q >= 0");
  py::gil_scoped_release release;
  host::gaussian_sketch(m, n, offset, key, seeds.data(), coeffs.data(),
                        static_cast<int64_t>(seeds.size()), reinterpret_cast<const float*>(omega), q,
                        transpose, reinterpret_cast<float*>(out), num_threads);
}

void host_subspace_perturb(const std::vector<int>& dtype, const std::vector<uintptr_t>& w,
                           const std::vector<uintptr_t>& basis, const std::vector<int64_t>& m,
                           const std::vector<int64_t>& n, const std::vector<int64_t>& r,
                           const std::vector<uint64_t>& offset, const std::vector<uint32_t>& key,
                           const std::vector<uint64_t>& rounding_index,
                           const std::vector<uint64_t>& seeds, const std::vector<float>& coeffs,
                           float decay, bool stochastic, uint64_t rounding_seed, int num_threads) {
  const size_t count = w.size();
  if (dtype.size() != count || basis.size() != count || m.size() != count || n.size() != count ||
      r.size() != count || offset.size() != count || key.size() != count ||
      rounding_index.size() != count)
    throw std::invalid_argument("per-matrix argument lists must have equal lengths");
  if (seeds.size() != coeffs.size()) throw std::invalid_argument("seeds and coeffs differ in length");
  std::vector<host::SubspaceMatrix> mats(count);
  for (size_t p = 0; p < count; ++p) {
    if (m[p] < 0 || n[p] < 0 || r[p] < 1) throw std::invalid_argument("need m, n >= 0 and r >= 1");
    mats[p] = host::SubspaceMatrix{to_dtype(dtype[p]), reinterpret_cast<void*>(w[p]),
                                   reinterpret_cast<const float*>(basis[p]), m[p], n[p], r[p],
                                   offset[p], key[p], rounding_index[p]};
  }
  const StreamArgs stream{seeds.data(), coeffs.data(), static_cast<int64_t>(seeds.size()), decay,
                          0.0f, RoundingArgs{stochastic, rounding_seed}};
  py::gil_scoped_release release;
  host::subspace_perturb(mats, stream, num_threads);
}

py::tuple philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const Words4 w = philox4x32_10(c0, c1, c2, c3, k0, k1);
  return py::make_tuple(w.w0, w.w1, w.w2, w.w3);
}

// f(start + l) for l in [0, count): a per-element header function evaluated on the host.
template <typename T, typename F>
std::vector<T> over_indices(uint64_t start, int64_t count, F f) {
  if (count < 0) throw std::invalid_argument("count must be >= 0");
  std::vector<T> out(static_cast<size_t>(count));
  for (int64_t l = 0; l < count; ++l) out[l] = f(start + static_cast<uint64_t>(l));
  return out;
}

// rho(seed, key, start + l) for l in [0, count), one scalar header call each (pgap/rademacher.h).
std::vector<float> rademacher_values(uint64_t seed, uint32_t key, uint64_t start, int64_t count) {
  return over_indices<float>(start, count, [&](uint64_t i) { return rademacher_value(seed, key, i); });
}

// The stochastic-rounding words (splitmix64-u16/v2) of elements start .. start + count - 1 under
// (rounding_seed, key), one scalar header call each (pgap/rounding.h).
std::vector<uint32_t> rounding_words(uint64_t rounding_seed, uint32_t key, uint64_t start,
                                     int64_t count) {
  return over_indices<uint32_t>(start, count,
                                [&](uint64_t i) { return rounding_word(rounding_seed, key, i); });
}

// The CUDA kernel's warp schedule replayed on the host: the terms coeff * rho of the 1024
// elements of Rademacher blocks first_block .. first_block + 7, element 128 r + 4 l + k written
// by lane l in step r from the word it shuffles in (pgap/rademacher.h).
std::vector<float> rademacher_warp_terms(uint64_t seed, uint32_t key, uint64_t first_block,
                                         float coeff) {
  uint32_t kept[32];  // what each lane keeps of the block it draws
  for (uint32_t lane = 0; lane < 32; ++lane)
    kept[lane] = word_of_lane(rademacher_block_words(seed, key, first_block + rademacher_lane_block(lane)),
                              rademacher_lane_word(lane));
  std::vector<float> out(kRademacherWarpBlocks * kRademacherBlockElements);
  for (uint32_t r = 0; r < kRademacherWarpBlocks; ++r)
    for (uint32_t lane = 0; lane < 32; ++lane) {
      float term[4];
      rademacher_lane_terms(coeff, kept[rademacher_source_lane(lane, r)], lane, term);
      for (uint32_t k = 0; k < 4; ++k) out[kRademacherBlockElements * r + 4 * lane + k] = term[k];
    }
  return out;
}

py::dict build_info() {
  py::dict d;
#ifdef PGAP_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(PGAP_CUDA_ARCHS_STR);
  d["cuda_runtime_version"] = CUDART_VERSION;
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string();
  d["cuda_runtime_version"] = 0;
#endif
  d["host_isas"] = host::supported_isas();
  d["host_isa"] = host::current_isa();
  py::dict timings;
  for (const auto& it : host::isa_choice_timings()) timings[py::str(it.first)] = it.second;
  d["host_isa_seconds"] = timings;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pgap-kernels native kernels (host always, CUDA when built with nvcc)";
  m.def("host_perturb", &host_perturb,
        "Fused seeded perturbation of one dtype group on the CPU (data <- f(src); src == data in place; "
        "src_dtype -1: data's dtype)",
        py::arg("dtype"), py::arg("data"), py::arg("src"), py::arg("mean"), py::arg("numel"),
        py::arg("offset"),
        py::arg("key"), py::arg("seeds"), py::arg("coeffs"), py::arg("decay"), py::arg("mean_coeff"),
        py::arg("stochastic"), py::arg("rounding_seed"), py::arg("distribution"),
        py::arg("num_threads"), py::arg("minus") = std::vector<uintptr_t>{},
        py::arg("src_dtype") = -1);
  m.def("host_lowrank_update", &host_lowrank_update,
        "In-place W <- decay*W + L*R^T on the CPU (L, R float32 row-major)", py::arg("dtype"),
        py::arg("w"), py::arg("m"), py::arg("n"), py::arg("left"), py::arg("right"), py::arg("k"),
        py::arg("decay"), py::arg("stochastic"), py::arg("rounding_seed"), py::arg("key"),
        py::arg("index"), py::arg("num_threads"));
  m.def("host_gaussian_sketch", &host_gaussian_sketch,
        "A*omega or A^T*omega for an implicit seeded Gaussian sum A on the CPU (float32)",
        py::arg("m"), py::arg("n"), py::arg("offset"), py::arg("key"), py::arg("seeds"),
        py::arg("coeffs"), py::arg("omega"), py::arg("q"), py::arg("transpose"), py::arg("out"),
        py::arg("num_threads"));
  m.def("host_subspace_perturb", &host_subspace_perturb,
        "In-place W <- decay*W + Xi*V^T for many matrices on the CPU (Xi drawn from the stream)",
        py::arg("dtype"), py::arg("w"), py::arg("basis"), py::arg("m"), py::arg("n"), py::arg("r"),
        py::arg("offset"), py::arg("key"), py::arg("rounding_index"), py::arg("seeds"),
        py::arg("coeffs"), py::arg("decay"), py::arg("stochastic"), py::arg("rounding_seed"),
        py::arg("num_threads"));
  m.def("philox4x32_10", &philox, "Raw Philox4x32-10 words for one counter and key");
  m.def("rademacher_values", &rademacher_values,
        "rho(seed, key, start + l) for l < count, element by element (the shared header's math)",
        py::arg("seed"), py::arg("key"), py::arg("start"), py::arg("count"));
  m.def("rounding_words", &rounding_words,
        "The stochastic-rounding words of elements start .. start + count - 1, element by element "
        "(the shared header's math)",
        py::arg("rounding_seed"), py::arg("key"), py::arg("start"), py::arg("count"));
  m.def("rademacher_warp_terms", &rademacher_warp_terms,
        "coeff * rho over one CUDA warp's 8 blocks, by the CUDA kernel's lane schedule (on the host)",
        py::arg("seed"), py::arg("key"), py::arg("first_block"), py::arg("coeff"));
  m.def("build_info", &build_info);
  m.def("set_host_isa", &host::set_isa, py::arg("isa"));
#ifdef PGAP_WITH_CUDA
  m.def(
      "cuda_perturb",
      [](int dtype, uintptr_t meta, int64_t n_tensors, int64_t total_chunks, uintptr_t seeds,
         uintptr_t coeffs, int64_t n_seeds, float decay, float mean_coeff, bool has_mean,
         bool stochastic, uint64_t rounding_seed, int distribution, int device, uintptr_t stream,
         int src_dtype) {
        const DType dt = to_dtype(dtype);
        const DType src_dt = to_src_dtype(dt, src_dtype, stochastic);
        const Distribution dist = to_distribution(distribution);
        py::gil_scoped_release release;
        cuda::perturb(dt, src_dt, reinterpret_cast<const cuda::TensorMeta*>(meta), n_tensors, total_chunks,
                      reinterpret_cast<const uint64_t*>(seeds), reinterpret_cast<const float*>(coeffs),
                      n_seeds, decay, mean_coeff, has_mean, stochastic, rounding_seed, dist, device,
                      reinterpret_cast<void*>(stream));
      },
      "Fused seeded perturbation of one dtype group on a CUDA device (device pointers)",
      py::arg("dtype"), py::arg("meta"), py::arg("n_tensors"), py::arg("total_chunks"),
      py::arg("seeds"), py::arg("coeffs"), py::arg("n_seeds"), py::arg("decay"),
      py::arg("mean_coeff"), py::arg("has_mean"), py::arg("stochastic"), py::arg("rounding_seed"),
      py::arg("distribution"), py::arg("device"), py::arg("stream"), py::arg("src_dtype") = -1);
  m.attr("CUDA_CHUNK_BLOCKS") = cuda::kChunkBlocks;
  m.attr("CUDA_RADEMACHER_CHUNK_BLOCKS") = cuda::kRademacherChunkBlocks;
  m.def(
      "cuda_lowrank_update",
      [](int dtype, uintptr_t w_ptrs, uintptr_t left_ptrs, uintptr_t right_ptrs, int64_t count,
         int64_t m, int64_t n, int64_t k, float decay, uintptr_t keys, uintptr_t indices,
         bool stochastic, uint64_t rounding_seed, int device, uintptr_t stream) {
        const DType dt = to_dtype(dtype);
        if (m < 0 || n < 0 || k < 1 || count < 0) throw std::invalid_argument("need m, n, count >= 0, k >= 1");
        py::gil_scoped_release release;
        cuda::lowrank_update(dt, reinterpret_cast<const int64_t*>(w_ptrs),
                             reinterpret_cast<const int64_t*>(left_ptrs),
                             reinterpret_cast<const int64_t*>(right_ptrs), count, m, n, k, decay,
                             reinterpret_cast<const int64_t*>(keys),
                             reinterpret_cast<const int64_t*>(indices), stochastic, rounding_seed,
                             device, reinterpret_cast<void*>(stream));
      },
      "Batched in-place W <- decay*W + L*R^T for same-shape matrices (device pointer arrays)");
  m.def(
      "cuda_gaussian_sketch",
      [](uintptr_t keys, uintptr_t offsets, uintptr_t omega_ptrs, uintptr_t out_ptrs, int64_t count,
         int64_t m, int64_t n, int64_t q, uintptr_t seeds, uintptr_t coeffs, int64_t n_seeds,
         bool transpose, int device, uintptr_t stream) {
        if (m < 0 || n < 0 || q < 0 || count < 0) throw std::invalid_argument("need m, n, q, count >= 0");
        py::gil_scoped_release release;
        cuda::gaussian_sketch(reinterpret_cast<const int64_t*>(keys),
                              reinterpret_cast<const int64_t*>(offsets),
                              reinterpret_cast<const int64_t*>(omega_ptrs),
                              reinterpret_cast<const int64_t*>(out_ptrs), count, m, n, q,
                              reinterpret_cast<const uint64_t*>(seeds),
                              reinterpret_cast<const float*>(coeffs), n_seeds, transpose, device,
                              reinterpret_cast<void*>(stream));
      },
      "Batched implicit Gaussian-sum sketches for same-shape problems (device pointer arrays)");
  m.def(
      "cuda_subspace_perturb",
      [](int dtype, uintptr_t meta, int64_t count, int64_t total_tiles, int64_t span, uintptr_t seeds,
         uintptr_t coeffs, int64_t n_seeds, float decay, bool stochastic, uint64_t rounding_seed,
         int device, uintptr_t stream) {
        const DType dt = to_dtype(dtype);
        if (count < 0 || total_tiles < 0 || span < 1) throw std::invalid_argument("need count, total_tiles >= 0 and span >= 1");
        py::gil_scoped_release release;
        cuda::subspace_perturb(dt, reinterpret_cast<const cuda::SubspaceMeta*>(meta), count,
                               total_tiles, span, reinterpret_cast<const uint64_t*>(seeds),
                               reinterpret_cast<const float*>(coeffs), n_seeds, decay, stochastic,
                               rounding_seed, device, reinterpret_cast<void*>(stream));
      },
      "In-place W <- decay*W + Xi*V^T for one dtype group of matrices on a CUDA device (device table)");
  m.attr("CUDA_SUBSPACE_TILE") = py::make_tuple(cuda::kSubspaceRows, cuda::kSubspaceCols);
#endif
}
