// Built when the CUDA kernels are not: nothing to register (build_info()["cuda"] is False).
#include "register.h"

namespace pws::bind {
void register_cuda(pybind11::module_&) {}
}  // namespace pws::bind
