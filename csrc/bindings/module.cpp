// The compiled core pyweightstat._C: wiring only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../cpu/describe.h"
#include "register.h"

namespace py = pybind11;

#ifndef PWS_VERSION
#define PWS_VERSION "0.0.0"
#endif

namespace {

std::vector<int> cuda_archs() {
  std::vector<int> out;
#if defined(PWS_HAVE_CUDA) && defined(PWS_CUDA_ARCHS)
  std::string s = PWS_CUDA_ARCHS;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string tok = s.substr(pos, end - pos);
    int v = 0;
    for (char ch : tok) {
      if (ch >= '0' && ch <= '9') v = v * 10 + (ch - '0');
    }
    if (v > 0) out.push_back(v);
    pos = end + 1;
  }
#endif
  return out;
}

py::dict build_info() {
  py::dict d;
  d["version"] = PWS_VERSION;
#if defined(PWS_HAVE_OPENMP)
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#if defined(PWS_HAVE_CUDA)
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  d["cuda_archs"] = cuda_archs();
  d["simd"] = pws::cpu::simd_name();
  d["max_threads"] = pws::cpu::max_threads();
#if defined(__VERSION__)
  d["compiler"] = __VERSION__;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyweightstat compiled core (private; use the pyweightstat package)";
  m.def("build_info", &build_info, "What this build of the engine contains.");
  pws::bind::register_stats(m);
  pws::bind::register_distances(m);
  pws::bind::register_cuda(m);
}
