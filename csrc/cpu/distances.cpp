// Distances between normalised histograms: Wasserstein-1 (bin centres as support), KS, JS
// divergence (bits), Hellinger (sqrt(1 - Bhattacharyya coefficient), computed without cancellation)
// and total variation.
#include "distances.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pws::cpu {
namespace {

// Per-row precomputation: probabilities, their square roots, and the CDF.
struct Rows {
  int64_t k = 0, b = 0;
  std::vector<double> p, sq, cdf;
  std::vector<char> empty;
};

Rows prepare(const int64_t* counts, int64_t k, int64_t b) {
  Rows r;
  r.k = k;
  r.b = b;
  const size_t n = static_cast<size_t>(k * b);
  r.p.resize(n);
  r.sq.resize(n);
  r.cdf.resize(n);
  r.empty.assign(static_cast<size_t>(k), 0);
  for (int64_t i = 0; i < k; ++i) {
    const int64_t* c = counts + i * b;
    int64_t total = 0;
    for (int64_t j = 0; j < b; ++j) total += c[j];
    r.empty[static_cast<size_t>(i)] = total <= 0;
    const double inv = total > 0 ? 1.0 / static_cast<double>(total) : 0.0;
    int64_t acc = 0;  // the CDF from integer partial sums: exactly 0 before and 1 after the data
    for (int64_t j = 0; j < b; ++j) {
      const double p = static_cast<double>(c[j]) * inv;
      const size_t o = static_cast<size_t>(i * b + j);
      acc += c[j];
      r.p[o] = p;
      r.sq[o] = std::sqrt(p);
      r.cdf[o] = total > 0 ? static_cast<double>(acc) / static_cast<double>(total) : 0.0;
    }
  }
  return r;
}

double pair(const Rows& x, int64_t i, const Rows& y, int64_t j, const double* centres,
            Metric metric) {
  if (x.empty[static_cast<size_t>(i)] || y.empty[static_cast<size_t>(j)]) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  const int64_t b = x.b;
  const double* p = x.p.data() + i * b;
  const double* q = y.p.data() + j * b;
  double acc = 0.0;
  switch (metric) {
    case Metric::Wasserstein: {
      const double* P = x.cdf.data() + i * b;
      const double* Q = y.cdf.data() + j * b;
      for (int64_t t = 0; t + 1 < b; ++t)
        acc += std::fabs(P[t] - Q[t]) * (centres[t + 1] - centres[t]);
      return acc;
    }
    case Metric::KS: {
      const double* P = x.cdf.data() + i * b;
      const double* Q = y.cdf.data() + j * b;
      for (int64_t t = 0; t < b; ++t) acc = std::max(acc, std::fabs(P[t] - Q[t]));
      return acc;
    }
    case Metric::JS: {
      for (int64_t t = 0; t < b; ++t) {
        const double m = 0.5 * (p[t] + q[t]);
        if (p[t] > 0.0) acc += 0.5 * p[t] * std::log2(p[t] / m);
        if (q[t] > 0.0) acc += 0.5 * q[t] * std::log2(q[t] / m);
      }
      return std::min(1.0, std::max(0.0, acc));
    }
    case Metric::Hellinger: {
      const double* sp = x.sq.data() + i * b;
      const double* sq = y.sq.data() + j * b;
      // sqrt(1 - sum sqrt(p q)) written as sqrt(sum (sqrt p - sqrt q)^2 / 2): no cancellation
      for (int64_t t = 0; t < b; ++t) acc += (sp[t] - sq[t]) * (sp[t] - sq[t]);
      return std::sqrt(0.5 * acc);
    }
    case Metric::TV: {
      for (int64_t t = 0; t < b; ++t) acc += std::fabs(p[t] - q[t]);
      return 0.5 * acc;
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

std::vector<double> pairwise_distances(const int64_t* counts, int64_t k, int64_t b,
                                       const double* centres, Metric metric) {
  const Rows r = prepare(counts, k, b);
  std::vector<double> out(static_cast<size_t>(k * k), 0.0);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < k; ++i) {
    out[static_cast<size_t>(i * k + i)] =
        r.empty[static_cast<size_t>(i)] ? std::numeric_limits<double>::quiet_NaN() : 0.0;
    for (int64_t j = i + 1; j < k; ++j) {
      const double d = pair(r, i, r, j, centres, metric);
      out[static_cast<size_t>(i * k + j)] = d;
      out[static_cast<size_t>(j * k + i)] = d;
    }
  }
  return out;
}

std::vector<double> rowwise_distances(const int64_t* a, const int64_t* b, int64_t k, int64_t nb,
                                      const double* centres, Metric metric) {
  const Rows ra = prepare(a, k, nb), rb = prepare(b, k, nb);
  std::vector<double> out(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) out[static_cast<size_t>(i)] = pair(ra, i, rb, i, centres, metric);
  return out;
}

}  // namespace pws::cpu
