// Mergeable moment state (count, mean, central sums M2..M4, extremes, norms, special-value
// counts) and the pairwise merge of Chan et al. / Pebay (2008). Host/device portable.
#pragma once
#include <cmath>
#include <cstdint>

#include "pws/portable.h"

namespace pws {

struct MomentState {
  int64_t n;  // finite values
  int64_t nan;
  int64_t posinf;
  int64_t neginf;
  int64_t zero;
  double mean;
  double m2;  // sum (x - mean)^2
  double m3;
  double m4;
  double min;
  double max;
  double sum_abs;
  double sum_sq;
};

PWS_HD inline MomentState moment_identity() {
  MomentState s;
  s.n = s.nan = s.posinf = s.neginf = s.zero = 0;
  s.mean = s.m2 = s.m3 = s.m4 = 0.0;
  s.min = INFINITY;
  s.max = -INFINITY;
  s.sum_abs = s.sum_sq = 0.0;
  return s;
}

// Central moments of a group from sums of d = x - shift over its n finite values.
PWS_HD inline void moments_from_shifted_sums(double n, double shift, double s1, double s2,
                                             double s3, double s4, double* mean, double* m2,
                                             double* m3, double* m4) {
  const double d = s1 / n;  // mean - shift
  const double d2 = d * d;
  *mean = shift + d;
  *m2 = s2 - s1 * d;
  *m3 = s3 - 3.0 * d * s2 + 2.0 * d2 * s1;
  *m4 = s4 - 4.0 * d * s3 + 6.0 * d2 * s2 - 3.0 * d2 * d * s1;
}

// a <- a merged with b, as if computed over the concatenation of their values.
PWS_HD inline void moment_merge(MomentState& a, const MomentState& b) {
  a.nan += b.nan;
  a.posinf += b.posinf;
  a.neginf += b.neginf;
  a.zero += b.zero;
  a.sum_abs += b.sum_abs;
  a.sum_sq += b.sum_sq;
  a.min = b.min < a.min ? b.min : a.min;
  a.max = b.max > a.max ? b.max : a.max;
  if (b.n == 0) return;
  if (a.n == 0) {
    a.n = b.n;
    a.mean = b.mean;
    a.m2 = b.m2;
    a.m3 = b.m3;
    a.m4 = b.m4;
    return;
  }
  const double na = static_cast<double>(a.n), nb = static_cast<double>(b.n);
  const double n = na + nb;
  const double delta = b.mean - a.mean;
  const double dn = delta / n;
  const double dn2 = dn * dn;
  const double t = delta * dn * na * nb;  // delta^2 na nb / n
  const double m2 = a.m2 + b.m2 + t;
  const double m3 = a.m3 + b.m3 + t * dn * (na - nb) + 3.0 * dn * (na * b.m2 - nb * a.m2);
  const double m4 = a.m4 + b.m4 + t * dn2 * (na * na - na * nb + nb * nb) +
                    6.0 * dn2 * (na * na * b.m2 + nb * nb * a.m2) +
                    4.0 * dn * (na * b.m3 - nb * a.m3);
  a.n += b.n;
  a.mean += nb * dn;
  a.m2 = m2;
  a.m3 = m3;
  a.m4 = m4;
}

}  // namespace pws
