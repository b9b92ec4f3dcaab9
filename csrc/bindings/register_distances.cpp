// Bindings of the histogram distances.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "../cpu/distances.h"
#include "register.h"

namespace py = pybind11;

namespace pws::bind {
namespace {

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::array_t<double> pairwise(const I64& counts, const F64& centres, int metric) {
  if (counts.ndim() != 2) throw py::value_error("counts must be a (K, B) array");
  const int64_t k = counts.shape(0), b = counts.shape(1);
  if (centres.size() != b) throw py::value_error("centres must have B values");
  std::vector<double> out;
  {
    py::gil_scoped_release release;
    out = cpu::pairwise_distances(counts.data(), k, b, centres.data(),
                                  static_cast<cpu::Metric>(metric));
  }
  py::array_t<double> r({k, k});
  std::copy(out.begin(), out.end(), r.mutable_data());
  return r;
}

py::array_t<double> rowwise(const I64& a, const I64& b, const F64& centres, int metric) {
  if (a.ndim() != 2 || b.ndim() != 2 || a.shape(0) != b.shape(0) || a.shape(1) != b.shape(1)) {
    throw py::value_error("a and b must be (K, B) arrays of the same shape");
  }
  const int64_t k = a.shape(0), nb = a.shape(1);
  if (centres.size() != nb) throw py::value_error("centres must have B values");
  std::vector<double> out;
  {
    py::gil_scoped_release release;
    out = cpu::rowwise_distances(a.data(), b.data(), k, nb, centres.data(),
                                 static_cast<cpu::Metric>(metric));
  }
  py::array_t<double> r(k);
  std::copy(out.begin(), out.end(), r.mutable_data());
  return r;
}

}  // namespace

void register_distances(py::module_& m) {
  m.def("pairwise_distances", &pairwise, py::arg("counts"), py::arg("centres"), py::arg("metric"),
        "K x K distances between the rows of a (K, B) int64 count matrix. Metric codes: "
        "0 wasserstein, 1 ks, 2 js, 3 hellinger, 4 tv.");
  m.def("rowwise_distances", &rowwise, py::arg("a"), py::arg("b"), py::arg("centres"),
        py::arg("metric"), "Distances between corresponding rows of two (K, B) count matrices.");
}

}  // namespace pws::bind
