// One register_<area>() per area; module.cpp only wires them.
#pragma once
#include <pybind11/pybind11.h>

namespace pws::bind {
void register_stats(pybind11::module_& m);
void register_distances(pybind11::module_& m);
void register_cuda(pybind11::module_& m);  // no-op stubs report "no CUDA" when built without it
}  // namespace pws::bind
