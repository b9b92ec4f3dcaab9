// Reading the inputs: vector loads of aligned contiguous data, strided element offsets, and the
// packed 16-bit paths (extremes and zero counts of two float16/bfloat16 values per 32-bit word).
// Part of the fused pass; included through fused_launch.cuh only (see kernel_common.cuh).
#pragma once

#include <cstdint>

#include "kernel_common.cuh"
#include "pws/dtype.h"

namespace pws::cuda {
namespace {

// ---------------------------------------------------------------- loads
template <class T>
struct Compute {
  using type = typename Load<T>::CT;
};

__device__ __forceinline__ float load1(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load1(const double* p) { return __ldg(p); }
__device__ __forceinline__ float load1(const half_t* p) {
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}
__device__ __forceinline__ float load1(const bfloat16_t* p) {
  return __uint_as_float(static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p)))
                         << 16);
}

template <class T>
struct VecWidth {
  static constexpr int value = 16 / static_cast<int>(sizeof(T));
};

// One 16-byte aligned load (kept packed in registers until its group is consumed) and its
// unpacking to the compute type.
template <class T>
struct Raw {
  using type = uint4;
};
template <>
struct Raw<float> {
  using type = float4;
};
template <>
struct Raw<double> {
  using type = double2;
};

template <class T>
__device__ __forceinline__ typename Raw<T>::type load_raw(const T* p) {
  return __ldg(reinterpret_cast<const typename Raw<T>::type*>(p));
}

__device__ __forceinline__ void unpack(const float4& q, float* v) {
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
}
__device__ __forceinline__ void unpack(const double2& q, double* v) {
  v[0] = q.x;
  v[1] = q.y;
}
template <class T>
__device__ __forceinline__ void unpack16(const uint4& q, float* v) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (std::is_same_v<T, half_t>) {
      v[2 * k] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] & 0xffffu)));
      v[2 * k + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] >> 16)));
    } else {
      v[2 * k] = __uint_as_float(w[k] << 16);
      v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  }
}
// ---------------------------------------------------------------- packed 16-bit summaries
// A 16-byte load of float16 or bfloat16 holds 4 words of two values each (the lower-indexed value
// in the low half, as unpack16 reads them). The extremes and the zero count of these inputs are
// taken on whole words as soon as they are loaded: one HMNMX2 per word for each extreme, and one
// HSET2 per word giving a 0xffff mask per zero half, the masks summed with IADD3, in place of two
// FMNMX and an FSET + FADD per value. NaN halves drop out of min and max (the instructions return
// the other operand) and are not zero, so the words need no test; an infinity would enter the
// extremes of the finite values, so a thread that counted one takes its extremes again from
// memory at the end of its chunk (rescan_extremes). The inline PTX is used where the target has
// the instruction; elsewhere (older targets, and the host CUDA emulator of the tests) the portable
// code computes the same bits.
template <class T>
__device__ __forceinline__ float half_to_float(uint32_t bits16) {
  if constexpr (std::is_same_v<T, half_t>) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits16)));
  } else {
    return __uint_as_float(bits16 << 16);
  }
}

// The smaller (kMax: larger) of each pair of halves of a and b, as the original bits; a NaN half
// gives the other operand's half (a is never NaN here: it starts at an infinity). Which of -0 and
// +0 comes out is not specified (the engine compares zeros as equal).
template <class T, bool kMax>
__device__ __forceinline__ uint32_t minmax2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t d;
  if constexpr (std::is_same_v<T, half_t>) {
    if constexpr (kMax) {
      asm("max.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    } else {
      asm("min.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    }
  } else {
    if constexpr (kMax) {
      asm("max.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    } else {
      asm("min.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    }
  }
  return d;
#else
  uint32_t d = 0;
  for (int k = 0; k < 2; ++k) {
    const uint32_t ha = (a >> (16 * k)) & 0xffffu, hb = (b >> (16 * k)) & 0xffffu;
    const float fa = half_to_float<T>(ha), fb = half_to_float<T>(hb);
    const bool take_b = kMax ? fb > fa : fb < fa;
    d |= (take_b ? hb : ha) << (16 * k);
  }
  return d;
#endif
}

// 0xffff in each half of w that holds +0 or -0, else 0 (NaN and subnormals are not zero).
template <class T>
__device__ __forceinline__ uint32_t zero_mask2(uint32_t w) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, half_t>) {
    uint32_t d;
    asm("set.eq.u32.f16x2 %0, %1, %2;" : "=r"(d) : "r"(w), "r"(0u));  // sm_53 and later
    return d;
  }
#if __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<T, bfloat16_t>) {
    uint32_t d;
    asm("set.eq.u32.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(w), "r"(0u));
    return d;
  }
#endif
#endif
  const uint32_t lo = (w & 0x7fffu) == 0u ? 0x0000ffffu : 0u;
  const uint32_t hi = (w & 0x7fff0000u) == 0u ? 0xffff0000u : 0u;
  return lo | hi;
}

// Count of zero halves from a sum of zero masks: the sum is 0xffff * (L + 65536 H) mod 2^32 for L
// zeros in low halves and H in high ones, and 0xfffeffff is the inverse of 0xffff mod 2^32
// (exact while L < 65536 and H < 65536: a thread sees at most kMaxChunk / kThreads values per
// chunk).
static_assert(kMaxChunk / kThreads < 65536, "zero masks of a chunk must not wrap");
__device__ __forceinline__ int32_t zero_count_from_masks(uint32_t sum) {
  const uint32_t x = sum * 0xfffeffffu;
  return static_cast<int32_t>((x & 0xffffu) + (x >> 16));
}

// What a load past the end of the chunk holds (its values are padding, never counted): zeros, and
// for 16-bit inputs quiet NaNs, which fold_words ignores, so it needs no test of the load.
template <class T>
__device__ __forceinline__ typename Raw<T>::type padding_raw() {
  if constexpr (sizeof(T) == 2) {
    constexpr uint32_t nan2 = std::is_same_v<T, half_t> ? 0x7e007e00u : 0x7fc07fc0u;
    return uint4{nan2, nan2, nan2, nan2};
  } else {
    return typename Raw<T>::type{};
  }
}

// Fold the 4 words of one 16-byte load into the packed accumulators.
template <class T>
__device__ __forceinline__ void fold_words(const uint4& q, uint32_t& mn, uint32_t& mx,
                                           uint32_t& zeros) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    mn = minmax2<T, false>(mn, w[k]);
    mx = minmax2<T, true>(mx, w[k]);
    zeros += zero_mask2<T>(w[k]);
  }
}

template <class T, class CT>
__device__ __forceinline__ void unpack_to(const typename Raw<T>::type& q, CT* v) {
  if constexpr (sizeof(T) == 2) {
    unpack16<T>(q, v);
  } else {
    unpack(q, v);
  }
}

// Element offset of flat index f in a merged strided layout (innermost dimension last).
__device__ __forceinline__ int64_t strided_offset(const Entry& e, int64_t f) {
  if (e.ndim <= 0) return f;
  if (e.ndim == 1) return f * e.strides[0];
  int64_t off = 0;
  for (int d = e.ndim - 1; d > 0; --d) {
    const int64_t s = e.shape[d];
    const int64_t q = f / s;
    off += (f - q * s) * e.strides[d];
    f = q;
  }
  return off + f * e.strides[0];
}

}  // namespace
}  // namespace pws::cuda
