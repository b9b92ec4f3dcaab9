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

// log_bucket in branch-free 32-bit arithmetic, for the kernels' inner loops: the code of a value
// is `finite_base + bucket` for a finite value and one of three caller-chosen codes for -inf,
// +inf and NaN. With q = |bits| >> (23 - m), a normal value lies 1 + k = q + 1 - 2^m >= 1 buckets
// from the centre and a zero or subnormal one q + 1 - 2^m <= 0, clamped to 0.
struct LogCoder {
  int32_t shift;             // 23 - m
  int32_t qoff;              // 1 - 2^m
  int32_t base;              // finite_base + C (the code of zero)
  int32_t under, over, nan;  // codes of -inf, +inf, NaN
};

PWS_HD PWS_FORCEINLINE LogCoder make_log_coder(int m, int32_t finite_base, int32_t under,
                                               int32_t over, int32_t nan) {
  return LogCoder{
      23 - m, 1 - (int32_t(1) << m), finite_base + static_cast<int32_t>(log_center(m)), under, over,
      nan};
}

// Code of a finite value from its float32 bits.
PWS_HD PWS_FORCEINLINE int32_t log_code_finite(uint32_t b, const LogCoder& lc) {
  int32_t off = static_cast<int32_t>((b & 0x7fffffffu) >> lc.shift) + lc.qoff;
  off = off > 0 ? off : 0;
  const int32_t neg = -static_cast<int32_t>(b >> 31);  // -1 for a negative value, else 0
  return lc.base + ((off ^ neg) - neg);
}

// Code of any value from its float32 bits.
PWS_HD PWS_FORCEINLINE int32_t log_code(uint32_t b, const LogCoder& lc) {
  const uint32_t mag = b & 0x7fffffffu;
  const int32_t special = mag > 0x7f800000u ? lc.nan : ((b >> 31) ? lc.under : lc.over);
  return mag >= 0x7f800000u ? special : log_code_finite(b, lc);
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
