// Moment states <-> the packed rows the Python layer reads: float64 (P, 8) = mean, M2, M3, M4,
// min, max, sum|x|, sum x^2 and int64 (P, 5) = count, NaN, +Inf, -Inf, zero. Shared by the CPU
// and CUDA bindings.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "pws/moment_state.h"

namespace pws::bind {

inline void state_to_row(const MomentState& s, double* f, int64_t* n) {
  f[0] = s.mean;
  f[1] = s.m2;
  f[2] = s.m3;
  f[3] = s.m4;
  f[4] = s.min;
  f[5] = s.max;
  f[6] = s.sum_abs;
  f[7] = s.sum_sq;
  n[0] = s.n;
  n[1] = s.nan;
  n[2] = s.posinf;
  n[3] = s.neginf;
  n[4] = s.zero;
}

inline MomentState row_to_state(const double* f, const int64_t* n) {
  MomentState s;
  s.mean = f[0];
  s.m2 = f[1];
  s.m3 = f[2];
  s.m4 = f[3];
  s.min = f[4];
  s.max = f[5];
  s.sum_abs = f[6];
  s.sum_sq = f[7];
  s.n = n[0];
  s.nan = n[1];
  s.posinf = n[2];
  s.neginf = n[3];
  s.zero = n[4];
  return s;
}

// (float64 (P, 8), int64 (P, 5)) arrays for P states.
inline pybind11::tuple state_rows(const std::vector<MomentState>& st) {
  namespace py = pybind11;
  const py::ssize_t p = static_cast<py::ssize_t>(st.size());
  py::array_t<double> f({p, py::ssize_t(8)});
  py::array_t<int64_t> n({p, py::ssize_t(5)});
  for (py::ssize_t i = 0; i < p; ++i) {
    state_to_row(st[static_cast<size_t>(i)], f.mutable_data(i, 0), n.mutable_data(i, 0));
  }
  return py::make_tuple(f, n);
}

}  // namespace pws::bind
