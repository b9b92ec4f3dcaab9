// Bindings of the CPU fused pass (moments + histograms).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cstring>
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

// The views of imported host tensors (which must outlive them); a CUDA one is refused.
std::vector<TensorView> cpu_views(const std::vector<ImportedTensor>& imported,
                                  const std::vector<std::string>& names) {
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
  return views;
}

py::tuple describe_cpu(const py::list& caps, const std::vector<std::string>& names, bool moments,
                       int hist_kind, int64_t bins, const py::list& edges, int mantissa_bits) {
  const std::vector<ImportedTensor> imported = import_capsules(caps, names);
  const std::vector<TensorView> views = cpu_views(imported, names);
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

// One record of the CPU weight tracker: the fused pass over the tensors (moments, and a log
// histogram unless mantissa_bits < 0), their total, and every histogram as its non-empty buckets.
// Returns (f (P + 1, 8), n (P + 1, 5), nnz (P + 1,), buckets, counts, flows (P + 1, 3)): slot P is
// the total, whose state is the left fold ((s0 + s1) + s2) + ... of the tensors' states (as
// merging their Summaries in order gives) and whose histogram is the sum of theirs; buckets (global
// index on the universal grid) and counts are in (slot, bucket) order, nnz[t] of them for slot t;
// flows are (underflow, overflow, NaN) counts. The columns of the tracker's store, with no
// per-tensor Python objects.
py::tuple describe_cpu_record(const py::list& caps, const std::vector<std::string>& names,
                              int mantissa_bits) {
  const std::vector<ImportedTensor> imported = import_capsules(caps, names);
  const std::vector<TensorView> views = cpu_views(imported, names);
  if (views.empty()) throw py::value_error("describe_cpu_record needs at least one tensor");
  if (mantissa_bits > kMaxMantissaBits) throw py::value_error("mantissa_bits must be <= 10");
  cpu::HistRequest req;
  req.kind = mantissa_bits < 0 ? cpu::HistKind::None : cpu::HistKind::Log;
  req.mantissa_bits = mantissa_bits < 0 ? 0 : mantissa_bits;
  const size_t p = views.size();
  std::vector<MomentState> states(p + 1);
  std::vector<int64_t> nnz(p + 1, 0), flows(3 * (p + 1), 0), buckets, counts;
  {
    py::gil_scoped_release release;
    const std::vector<cpu::DescribeOutput> res = cpu::describe(views, true, req);
    for (size_t i = 0; i < p; ++i) states[i] = res[i].state;
    states[p] = states[0];
    for (size_t i = 1; i < p; ++i) moment_merge(states[p], states[i]);
    if (req.kind == cpu::HistKind::Log) {
      int64_t lo = INT64_MAX, hi = INT64_MIN;
      for (size_t i = 0; i < p; ++i) {
        const cpu::HistOutput& h = res[i].hist;
        for (size_t j = 0; j < h.counts.size(); ++j) {
          if (h.counts[j] == 0) continue;
          buckets.push_back(h.first + static_cast<int64_t>(j));
          counts.push_back(h.counts[j]);
          ++nnz[i];
        }
        if (nnz[i] > 0) {
          lo = std::min(lo, buckets[buckets.size() - static_cast<size_t>(nnz[i])]);
          hi = std::max(hi, buckets.back());
        }
        const int64_t f3[3] = {h.underflow, h.overflow, h.nan};
        for (int k = 0; k < 3; ++k) {
          flows[3 * i + k] = f3[k];
          flows[3 * p + k] += f3[k];
        }
      }
      if (lo <= hi) {  // the total: every tensor's buckets added on the grid
        std::vector<int64_t> dense(static_cast<size_t>(hi - lo + 1), 0);
        const size_t tensor_buckets = buckets.size();
        for (size_t k = 0; k < tensor_buckets; ++k)
          dense[static_cast<size_t>(buckets[k] - lo)] += counts[k];
        for (size_t j = 0; j < dense.size(); ++j) {
          if (dense[j] == 0) continue;
          buckets.push_back(lo + static_cast<int64_t>(j));
          counts.push_back(dense[j]);
          ++nnz[p];
        }
      }
    }
  }
  const py::tuple rows = state_rows(states);
  const auto vec = [](const std::vector<int64_t>& v, std::vector<py::ssize_t> shape) {
    py::array_t<int64_t> a(shape);
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(int64_t));
    return a;
  };
  const py::ssize_t P1 = static_cast<py::ssize_t>(p + 1);
  return py::make_tuple(
      rows[0], rows[1], vec(nnz, {P1}), vec(buckets, {static_cast<py::ssize_t>(buckets.size())}),
      vec(counts, {static_cast<py::ssize_t>(counts.size())}), vec(flows, {P1, py::ssize_t(3)}));
}

}  // namespace

void register_stats(py::module_& m) {
  m.def("describe_cpu_record", &describe_cpu_record, py::arg("capsules"), py::arg("names"),
        py::arg("mantissa_bits"),
        "One record of the CPU weight tracker (moments, and log histograms unless "
        "mantissa_bits < 0, of every tensor and of their total) as the store's columns: (f, n, "
        "nnz, buckets, counts, flows).");
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
