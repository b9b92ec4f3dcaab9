// A non-owning view of a strided tensor, filled from a DLPack capsule by the bindings.
#pragma once
#include <cstdint>

#include "pws/dtype.h"

namespace pws {

constexpr int kMaxDims = 16;

enum class DeviceKind : int { CPU = 0, CUDA = 1 };

struct TensorView {
  const void* data = nullptr;  // points at element [0, ..., 0] (byte_offset applied)
  DType dtype = DType::F32;
  DeviceKind device = DeviceKind::CPU;
  int device_id = 0;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements, may be negative or zero
  int64_t numel = 0;
};

}  // namespace pws
