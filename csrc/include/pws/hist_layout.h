// Histogram layouts shared by the CPU and CUDA kernels.
//
// Uniform: `bins` bins with float64 edges computed by np.linspace on the Python side; the bin of a
// value follows np.histogram exactly (estimate, then correct against the edges; last bin closed).
//
// Universal log-linear ("log"): buckets fixed by the float32 format. With m mantissa bits and
// C = 254 * 2^m, a value rounded to float32 falls in bucket
//   C                      for zero and subnormals (|x| < 2^-126),
//   C + 1 + k              for positive normals, k = (bits >> (23 - m)) - 2^m,
//   C - 1 - k              for negative normals (k of |x|),
// so indices run from 0 (most negative) to 2C (largest positive) in ascending value order.
#pragma once
#include <cstdint>

#include "pws/dtype.h"
#include "pws/portable.h"

namespace pws {

constexpr int64_t kBinUnder = -1;
constexpr int64_t kBinOver = -2;
constexpr int64_t kBinNaN = -3;
constexpr int kMaxMantissaBits = 10;

PWS_HD PWS_FORCEINLINE int64_t log_center(int m) { return static_cast<int64_t>(254) << m; }
PWS_HD PWS_FORCEINLINE int64_t log_num_buckets(int m) { return 2 * log_center(m) + 1; }

// Bucket of a float32 value; kBinUnder for -inf, kBinOver for +inf, kBinNaN for NaN.
PWS_HD PWS_FORCEINLINE int64_t log_bucket(float v, int m) {
  const uint32_t b = bits_from_float(v);
  const uint32_t mag = b & 0x7fffffffu;
  const int64_t c = log_center(m);
  if (mag >= 0x7f800000u) return mag > 0x7f800000u ? kBinNaN : ((b >> 31) ? kBinUnder : kBinOver);
  if (mag < 0x00800000u) return c;
  const int64_t k = static_cast<int64_t>(mag >> (23 - m)) - (int64_t(1) << m);
  return (b >> 31) ? c - 1 - k : c + 1 + k;
}

struct UniformLayout {
  int64_t bins;
  double lo, hi;
  double norm;          // bins / (hi - lo)
  const double* edges;  // bins + 1 edges (np.linspace)
};

// Bin of a finite-or-not value under np.histogram semantics.
PWS_HD PWS_FORCEINLINE int64_t uniform_bin(double x, const UniformLayout& u) {
  if (x != x) return kBinNaN;
  if (x < u.lo) return kBinUnder;
  if (x > u.hi) return kBinOver;
  int64_t i = static_cast<int64_t>((x - u.lo) * u.norm);
  if (i >= u.bins) i = u.bins - 1;
  if (i < 0) i = 0;
  if (x < u.edges[i]) {
    --i;
  } else if (i != u.bins - 1 && x >= u.edges[i + 1]) {
    ++i;
  }
  return i;
}

}  // namespace pws
