// Distances between histograms on common edges, computed on their counts.
#pragma once
#include <cstdint>
#include <vector>

namespace pws::cpu {

enum class Metric : int { Wasserstein = 0, KS = 1, JS = 2, Hellinger = 3, TV = 4 };

// counts: K rows of B bins (row-major); centres: B bin centres (used by Wasserstein only).
// Returns the K x K matrix (row-major). A row with no counts gives NaN distances.
std::vector<double> pairwise_distances(const int64_t* counts, int64_t k, int64_t b,
                                       const double* centres, Metric metric);

// Distances between row i of `a` and row i of `b` (both K x B).
std::vector<double> rowwise_distances(const int64_t* a, const int64_t* b, int64_t k, int64_t nb,
                                      const double* centres, Metric metric);

}  // namespace pws::cpu
