#include "dlpack_view.h"

#include <cstring>
#include <sstream>

#include "dlpack.h"

namespace py = pybind11;

namespace pws::bind {
namespace {

class LegacyOwner final : public DLPackOwner {
 public:
  explicit LegacyOwner(PwsDLManagedTensor* t) : t_(t) {}
  ~LegacyOwner() override {
    if (t_ && t_->deleter) t_->deleter(t_);
  }

 private:
  PwsDLManagedTensor* t_;
};

class VersionedOwner final : public DLPackOwner {
 public:
  explicit VersionedOwner(PwsDLManagedTensorVersioned* t) : t_(t) {}
  ~VersionedOwner() override {
    if (t_ && t_->deleter) t_->deleter(t_);
  }

 private:
  PwsDLManagedTensorVersioned* t_;
};

std::string dl_dtype_name(const PwsDLDataType& d) {
  std::ostringstream s;
  switch (d.code) {
    case kPwsDLInt:
      s << "int";
      break;
    case kPwsDLUInt:
      s << "uint";
      break;
    case kPwsDLFloat:
      s << "float";
      break;
    case kPwsDLBfloat:
      s << "bfloat";
      break;
    case kPwsDLComplex:
      s << "complex";
      break;
    case kPwsDLBool:
      s << "bool";
      break;
    default:
      s << "code" << int(d.code) << "_";
      break;
  }
  s << int(d.bits);
  if (d.lanes != 1) s << "x" << d.lanes;
  return s.str();
}

TensorView to_view(const PwsDLTensor& t, const std::string& what) {
  TensorView v;
  const PwsDLDataType& d = t.dtype;
  if (d.lanes != 1) throw py::type_error(what + ": vector dtypes are not supported");
  if (d.code == kPwsDLFloat && d.bits == 32) {
    v.dtype = DType::F32;
  } else if (d.code == kPwsDLFloat && d.bits == 64) {
    v.dtype = DType::F64;
  } else if (d.code == kPwsDLFloat && d.bits == 16) {
    v.dtype = DType::F16;
  } else if (d.code == kPwsDLBfloat && d.bits == 16) {
    v.dtype = DType::BF16;
  } else {
    throw py::type_error(what + " has dtype " + dl_dtype_name(d) +
                         "; accepted dtypes are float16, bfloat16, float32 and float64");
  }
  switch (t.device.device_type) {
    case kPwsDLCPU:
    case kPwsDLCUDAHost:
      v.device = DeviceKind::CPU;
      break;
    case kPwsDLCUDA:
    case kPwsDLCUDAManaged:
      v.device = DeviceKind::CUDA;
      break;
    default:
      throw py::value_error(what + " lives on DLPack device type " +
                            std::to_string(t.device.device_type) +
                            "; accepted devices are the CPU and NVIDIA CUDA GPUs");
  }
  v.device_id = t.device.device_id;
  if (t.ndim < 0 || t.ndim > kMaxDims) {
    throw py::value_error(what + " has " + std::to_string(t.ndim) + " dimensions; at most " +
                          std::to_string(kMaxDims) + " are supported");
  }
  v.ndim = t.ndim;
  int64_t numel = 1;
  for (int i = 0; i < t.ndim; ++i) {
    v.shape[i] = t.shape[i];
    numel *= t.shape[i];
  }
  if (t.strides) {
    for (int i = 0; i < t.ndim; ++i) v.strides[i] = t.strides[i];
  } else {
    int64_t s = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      v.strides[i] = s;
      s *= t.shape[i];
    }
  }
  v.numel = numel;
  v.data = static_cast<const char*>(t.data) + t.byte_offset;
  return v;
}

}  // namespace

ImportedTensor import_capsule(py::capsule cap, const std::string& what) {
  PyObject* obj = cap.ptr();
  ImportedTensor out;
  if (PyCapsule_IsValid(obj, "dltensor_versioned")) {
    auto* t =
        static_cast<PwsDLManagedTensorVersioned*>(PyCapsule_GetPointer(obj, "dltensor_versioned"));
    if (t->version.major > 1) {
      throw py::value_error(what + ": DLPack version " + std::to_string(t->version.major) +
                            " is newer than the supported 1.x");
    }
    PyCapsule_SetName(obj, "used_dltensor_versioned");
    out.owner = std::make_unique<VersionedOwner>(t);
    out.view = to_view(t->dl_tensor, what);
  } else if (PyCapsule_IsValid(obj, "dltensor")) {
    auto* t = static_cast<PwsDLManagedTensor*>(PyCapsule_GetPointer(obj, "dltensor"));
    PyCapsule_SetName(obj, "used_dltensor");
    out.owner = std::make_unique<LegacyOwner>(t);
    out.view = to_view(t->dl_tensor, what);
  } else {
    throw py::type_error(what + ": expected an unconsumed DLPack capsule");
  }
  return out;
}

std::vector<ImportedTensor> import_capsules(const py::list& caps,
                                            const std::vector<std::string>& names) {
  std::vector<ImportedTensor> out;
  out.reserve(caps.size());
  for (size_t i = 0; i < caps.size(); ++i) {
    const std::string what = i < names.size() ? names[i] : "input " + std::to_string(i);
    out.push_back(import_capsule(caps[i].cast<py::capsule>(), what));
  }
  return out;
}

}  // namespace pws::bind
