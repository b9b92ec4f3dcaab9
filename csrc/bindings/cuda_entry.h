// A CUDA input's kernel entry (csrc/cuda/describe_cuda.h) from its strided view: dimensions
// ordered and merged as on the CPU, contiguous 16-byte aligned inputs marked for vector loads.
// Plain C++ (no pybind11), so the host-emulated kernel tests (tests/cpp) build entries the same
// way.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../cpu/strided.h"
#include "../cuda/describe_cuda.h"
#include "pws/tensor_view.h"

namespace pws::bind {

// Throws std::invalid_argument (ValueError in Python) for a layout with more than kMaxCudaDims
// dimensions after merging.
inline cuda::Entry make_entry(const TensorView& v, const std::string& what) {
  cuda::Entry e{};
  e.numel = v.numel;
  e.dtype = static_cast<int32_t>(v.dtype);
  if (v.numel == 0) return e;
  const cpu::FlatView f = cpu::flatten(v);
  e.data = f.base;
  if (f.contiguous()) {
    e.ndim = 0;
    e.aligned = (reinterpret_cast<uintptr_t>(f.base) % 16 == 0) ? 1 : 0;
    return e;
  }
  if (f.ndim > cuda::kMaxCudaDims) {
    throw std::invalid_argument(what + " has a memory layout with " + std::to_string(f.ndim) +
                                " dimensions that cannot be merged; at most " +
                                std::to_string(cuda::kMaxCudaDims) +
                                " are supported on CUDA: pass a contiguous copy");
  }
  e.ndim = static_cast<int16_t>(f.ndim);
  for (int d = 0; d < f.ndim; ++d) {
    e.shape[d] = f.shape[d];
    e.strides[d] = f.strides[d];
  }
  return e;
}

}  // namespace pws::bind
