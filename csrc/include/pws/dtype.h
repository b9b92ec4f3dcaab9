// The supported element types, listed once, with loads to float/double that work on host and
// device, and the one dtype dispatch used by every kernel family.
#pragma once
#include <cstdint>
#include <cstring>

#include "pws/portable.h"

namespace pws {

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32:
      return "float32";
    case DType::F64:
      return "float64";
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
  }
  return "?";
}

inline int dtype_size(DType d) { return d == DType::F64 ? 8 : (d == DType::F32 ? 4 : 2); }

// Storage types for the 16-bit formats (bit patterns; loads convert them exactly to float).
struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

PWS_HD PWS_FORCEINLINE float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

PWS_HD PWS_FORCEINLINE uint32_t bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// IEEE binary16 -> binary32, exact for every input (subnormals, inf and NaN included).
PWS_HD PWS_FORCEINLINE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in float
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return float_from_bits(sign | 0x7f800000u | (man << 13));
  return float_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

PWS_HD PWS_FORCEINLINE float bf16_bits_to_float(uint16_t b) {
  return float_from_bits(static_cast<uint32_t>(b) << 16);
}

// load<CT>(p): read one element as the compute type CT (float for 16/32-bit inputs, double for
// float64 inputs). Every conversion here is exact.
template <class T>
struct Load;
template <>
struct Load<float> {
  using CT = float;
  PWS_HD static PWS_FORCEINLINE float get(const float* p) { return *p; }
};
template <>
struct Load<double> {
  using CT = double;
  PWS_HD static PWS_FORCEINLINE double get(const double* p) { return *p; }
};
template <>
struct Load<half_t> {
  using CT = float;
  PWS_HD static PWS_FORCEINLINE float get(const half_t* p) {
#if !defined(__CUDA_ARCH__) && defined(__FLT16_MANT_DIG__) && defined(__F16C__)
    _Float16 h;
    std::memcpy(&h, p, 2);
    return static_cast<float>(h);  // vectorises to vcvtph2ps
#else
    return half_bits_to_float(p->bits);
#endif
  }
};
template <>
struct Load<bfloat16_t> {
  using CT = float;
  PWS_HD static PWS_FORCEINLINE float get(const bfloat16_t* p) {
    return bf16_bits_to_float(p->bits);
  }
};

}  // namespace pws

// The one dtype dispatch: runs the body with `scalar_t` bound to the storage type.
#define PWS_DISPATCH_DTYPE(DT, ...)       \
  switch (DT) {                           \
    case ::pws::DType::F32: {             \
      using scalar_t = float;             \
      __VA_ARGS__;                        \
      break;                              \
    }                                     \
    case ::pws::DType::F64: {             \
      using scalar_t = double;            \
      __VA_ARGS__;                        \
      break;                              \
    }                                     \
    case ::pws::DType::F16: {             \
      using scalar_t = ::pws::half_t;     \
      __VA_ARGS__;                        \
      break;                              \
    }                                     \
    case ::pws::DType::BF16: {            \
      using scalar_t = ::pws::bfloat16_t; \
      __VA_ARGS__;                        \
      break;                              \
    }                                     \
  }
