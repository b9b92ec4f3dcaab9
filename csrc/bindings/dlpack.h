// The DLPack ABI (data structures of the open DLPack standard, v1.0), declared here so that the
// build needs no extra dependency. Only what the consumer side needs.
#pragma once
#include <cstdint>

extern "C" {

enum PwsDLDeviceType : int32_t {
  kPwsDLCPU = 1,
  kPwsDLCUDA = 2,
  kPwsDLCUDAHost = 3,
  kPwsDLCUDAManaged = 13,
};

enum PwsDLDataTypeCode : uint8_t {
  kPwsDLInt = 0,
  kPwsDLUInt = 1,
  kPwsDLFloat = 2,
  kPwsDLOpaqueHandle = 3,
  kPwsDLBfloat = 4,
  kPwsDLComplex = 5,
  kPwsDLBool = 6,
};

struct PwsDLDevice {
  int32_t device_type;
  int32_t device_id;
};

struct PwsDLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct PwsDLTensor {
  void* data;
  PwsDLDevice device;
  int32_t ndim;
  PwsDLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major
  uint64_t byte_offset;
};

struct PwsDLManagedTensor {
  PwsDLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(PwsDLManagedTensor* self);
};

struct PwsDLPackVersion {
  uint32_t major;
  uint32_t minor;
};

struct PwsDLManagedTensorVersioned {
  PwsDLPackVersion version;
  void* manager_ctx;
  void (*deleter)(PwsDLManagedTensorVersioned* self);
  uint64_t flags;
  PwsDLTensor dl_tensor;
};

}  // extern "C"
