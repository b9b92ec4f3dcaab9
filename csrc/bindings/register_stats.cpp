// Bindings of the CPU fused pass (moments + histograms).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../cpu/describe.h"
#include "dlpack_view.h"
#include "pws/hist_layout.h"
#include "register.h"
#include "state_rows.h"

namespace py = pybind11;

namespace pws::bind {
namespace {

// Pack the per-tensor results as (float64 (P, 8), int64 (P, 5), list of histogram tuples|None).
py::tuple pack(const std::vector<cpu::DescribeOutput>& res, cpu::HistKind kind) {
  std::vector<MomentState> states;
  states.reserve(res.size());
  for (const cpu::DescribeOutput& r : res) states.push_back(r.state);
  py::tuple rows = state_rows(states);
  py::list hists;
  for (size_t i = 0; i < res.size(); ++i) {
    if (kind == cpu::HistKind::None) {
      hists.append(py::none());
    } else {
      const cpu::HistOutput& h = res[i].hist;
      py::array_t<int64_t> counts(static_cast<py::ssize_t>(h.counts.size()));
      if (!h.counts.empty()) {
        std::memcpy(counts.mutable_data(), h.counts.data(), h.counts.size() * sizeof(int64_t));
      }
      hists.append(py::make_tuple(h.first, counts, h.underflow, h.overflow, h.nan));
    }
  }
  return py::make_tuple(rows[0], rows[1], hists);
}

py::tuple describe_cpu(const py::list& caps, const std::vector<std::string>& names, bool moments,
                       int hist_kind, int64_t bins, const py::list& edges, int mantissa_bits) {
  std::vector<ImportedTensor> imported = import_capsules(caps, names);
  std::vector<TensorView> views;
  views.reserve(imported.size());
  for (size_t i = 0; i < imported.size(); ++i) {
    if (imported[i].view.device != DeviceKind::CPU) {
      throw py::value_error(names.at(i) +
                            " is on a CUDA device; the CPU engine reads host memory "
                            "only (this is a bug in pyweightstat's dispatch)");
    }
    views.push_back(imported[i].view);
  }
  cpu::HistRequest req;
  req.kind = static_cast<cpu::HistKind>(hist_kind);
  req.bins = bins;
  req.mantissa_bits = mantissa_bits;
  std::vector<py::array_t<double, py::array::c_style | py::array::forcecast>> keep;
  if (req.kind == cpu::HistKind::Uniform) {
    if (edges.size() != views.size()) throw py::value_error("edges: one array per input expected");
    for (const auto& e : edges) {
      keep.emplace_back(py::reinterpret_borrow<py::object>(e));
      if (keep.back().size() != bins + 1) throw py::value_error("edges: bins + 1 values expected");
      req.edges.push_back(keep.back().data());
    }
  }
  if (req.kind == cpu::HistKind::Log && (mantissa_bits < 0 || mantissa_bits > kMaxMantissaBits)) {
    throw py::value_error("mantissa_bits must be in [0, 10]");
  }
  std::vector<cpu::DescribeOutput> res;
  {
    py::gil_scoped_release release;
    res = cpu::describe(views, moments, req);
  }
  return pack(res, req.kind);
}

// Merge two packed moment states (the float64 (8,) and int64 (5,) rows of describe_cpu).
py::tuple merge_states(const py::array_t<double, py::array::c_style | py::array::forcecast>& fa,
                       const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& na,
                       const py::array_t<double, py::array::c_style | py::array::forcecast>& fb,
                       const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& nb) {
  if (fa.size() != 8 || fb.size() != 8 || na.size() != 5 || nb.size() != 5) {
    throw py::value_error("merge_states: expected float64 (8,) and int64 (5,) states");
  }
  MomentState a = row_to_state(fa.data(), na.data());
  moment_merge(a, row_to_state(fb.data(), nb.data()));
  py::tuple packed = state_rows({a});
  return py::make_tuple(packed[0].attr("__getitem__")(0), packed[1].attr("__getitem__")(0));
}

// Fold packed moment states (float64 (P, 8) and int64 (P, 5) rows, P >= 1) left to right, as
// repeated merge_states calls would: ((s0 + s1) + s2) + ...; returns the packed merged state.
py::tuple merge_state_rows(
    const py::array_t<double, py::array::c_style | py::array::forcecast>& f,
    const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& n) {
  if (f.ndim() != 2 || n.ndim() != 2 || f.shape(1) != 8 || n.shape(1) != 5 ||
      f.shape(0) != n.shape(0) || f.shape(0) < 1) {
    throw py::value_error("merge_state_rows: expected float64 (P, 8) and int64 (P, 5), P >= 1");
  }
  const double* fp = f.data();
  const int64_t* np_ = n.data();
  MomentState a = row_to_state(fp, np_);
  for (py::ssize_t i = 1; i < f.shape(0); ++i)
    moment_merge(a, row_to_state(fp + 8 * i, np_ + 5 * i));
  py::tuple packed = state_rows({a});
  return py::make_tuple(packed[0].attr("__getitem__")(0), packed[1].attr("__getitem__")(0));
}

}  // namespace

void register_stats(py::module_& m) {
  m.def("merge_state_rows", &merge_state_rows, py::arg("f"), py::arg("n"),
        "Pebay merge of P packed moment states in order (left fold); returns the packed state.");
  m.def("merge_states", &merge_states, py::arg("fa"), py::arg("na"), py::arg("fb"), py::arg("nb"),
        "Pebay merge of two packed moment states; returns the packed merged state.");
  m.def("describe_cpu", &describe_cpu, py::arg("capsules"), py::arg("names"), py::arg("moments"),
        py::arg("hist_kind"), py::arg("bins"), py::arg("edges"), py::arg("mantissa_bits"),
        "Fused moments/histogram pass over CPU tensors given as DLPack capsules. Returns "
        "(float64 (P, 8): mean, M2, M3, M4, min, max, sum|x|, sum x^2; int64 (P, 5): count, nan, "
        "+inf, -inf, zero; list of (first, counts, underflow, overflow, nan) or None).");
  m.def("set_num_threads", &cpu::set_threads, py::arg("n"),
        "Set the number of OpenMP threads used by the CPU engine.");
  m.def("get_num_threads", &cpu::max_threads, "Number of OpenMP threads the CPU engine uses.");
}

}  // namespace pws::bind
