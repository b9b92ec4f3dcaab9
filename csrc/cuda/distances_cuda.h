// K x K distances between histograms on the GPU. Plain C++: includes no CUDA header.
#pragma once
#include <cstdint>

namespace pws::cuda {

// Distances between every pair of rows of a host (K, B) int64 count matrix, computed on `device`
// with the formulas of csrc/cpu/distances.cpp (metric codes of pws::cpu::Metric: 0 wasserstein,
// 1 ks, 2 js, 3 hellinger, 4 tv; `centres` (B values) are used by wasserstein only). Writes the
// symmetric K x K matrix to the host array `out`; rows without counts give NaN. Synchronous (this
// is an analysis call, not a per-step one). Throws std::runtime_error on CUDA errors.
void pairwise_distances(const int64_t* counts, int64_t k, int64_t b, const double* centres,
                        int metric, int device, double* out);

}  // namespace pws::cuda
