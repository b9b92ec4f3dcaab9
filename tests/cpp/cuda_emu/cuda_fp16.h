// Emulation stand-in for the CUDA half-precision header (see pws_emu.h): only what the kernels use.
#pragma once
#include <cmath>

#include "pws_emu.h"

struct __half {
  unsigned short x;
};
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
// binary16 -> binary32 (exact; NaN payloads are not kept: the kernels only test for NaN)
inline float __half2float(__half h) {
  const int e = (h.x >> 10) & 31, m = h.x & 1023;
  float v;
  if (e == 0) {
    v = std::ldexp(static_cast<float>(m), -24);
  } else if (e == 31) {
    v = m != 0 ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(1024 + m), e - 25);
  }
  return (h.x & 0x8000) != 0 ? -v : v;
}
