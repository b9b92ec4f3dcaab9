// CUDA fused pass: moments, extremes, norms, special-value counts and an optional uniform or
// universal log histogram, over many tensors per launch, on the caller's stream.
//
// Work items are (tensor, chunk of kChunk values, or of work_split().chunk); block b finds its
// tensor by binary search in the launch's table (a __grid_constant__ parameter, so no
// host-to-device copy per call). Each thread accumulates shifted power sums of its values (shift =
// its first finite value; short runs summed in the input precision, then added into float64, as the
// CPU kernels do), converts them to a MomentState and merges it across the warp (shuffles) and the
// block (shared memory) with the Pebay formulas of pws/moment_state.h. One state per chunk goes to
// a scratch array; a second kernel, launched as a programmatic dependent of the first, merges each
// tensor's chunk states in a fixed tree order. Every reduction has a fixed shape and histogram
// counts use integer atomics only, so results are bit-identical run to run.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_check.cuh"
#include "describe_cuda.h"
#include "pws/dtype.h"
#include "pws/hist_layout.h"
#include "pws/moment_state.h"

namespace pws::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = kThreads / 32;
// Dynamic shared memory a block may use for privatised histogram counters (and uniform edges).
// Above 48 KB the kernels opt in; 72 KB keeps the 3 blocks per SM that the histogram kernels'
// registers allow (227 KB of shared memory per SM on sm_90, 164 KB on sm_80: 2 blocks there).
// One copy of the counters per block: an increment by one compiles to ATOMS.POPC.INC, which
// adds the lanes of a warp that hit the same counter in one update, and lane-interleaved copies
// measured no faster on an H100 (313 us with one copy, 324 us with four, ViT-B/16 tracking).
constexpr size_t kSharedHistBudget = 72 * 1024;

// Kernel histogram kinds: HistKind's, plus a log histogram whose shared counters hold a band of
// its buckets (LogBand: m >= 6), a kernel of its own so that the others carry none of its code.
constexpr int kHistLogBand = 3;
PWS_HD constexpr bool is_log(int hist) { return hist == kHistLog || hist == kHistLogBand; }

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// ---------------------------------------------------------------- kernel parameters
// Kernel specialisations: contiguous 16-byte aligned float32 / float16 / bfloat16 inputs get a
// kernel of their own (each fits in 64 registers, 4 blocks per SM); everything else (float64,
// strided or unaligned inputs) goes through one generic kernel that dispatches on the dtype.
enum KernelKind : int32_t { kKindF32 = 0, kKindF16 = 1, kKindBF16 = 2, kKindGeneric = 3 };

struct EntryTable {
  int32_t count;
  int32_t kind;                        // KernelKind of every entry
  int64_t merge_group;                 // chunk states per merge block (work_split())
  int64_t chunk_base;                  // scratch index of this launch's first chunk
  int64_t chunk_begin[kMaxBatch + 1];  // prefix sums of chunks, relative to chunk_base
  int64_t group_base;                  // scratch index of this launch's first merge group
  int32_t group_begin[kMaxBatch + 1];  // prefix sums of merge groups, relative to group_base
  int32_t unit_begin[kMaxBatch + 1];   // prefix sums of merge units (blocks of merge_kernel)
  int32_t index[kMaxBatch];            // global tensor index of each entry
  int32_t chunk[kMaxBatch];            // values per work item of each entry (chunk_of)
  Entry entries[kMaxBatch];
};

struct Params {
  MomentState* states;       // (P + 1)
  MomentState* scratch;      // one per chunk, then one per merge group
  unsigned int* tickets;     // arrivals of merge groups, one per tensor (zeroed by fused_kernel)
  unsigned long long* hist;  // (P + 1) records
  double* edges;             // uniform edges
  int64_t tensors;
  int64_t nb;
  int64_t record;
  int64_t bins;
  int64_t edge_stride;  // 0: one shared edges array; else bins + 1
  int32_t hist_kind;
  int32_t edge_mode;
  int32_t shared_hist;   // 1: counters privatised in shared memory; 0: in global memory
  int32_t shared_slots;  // counters in shared memory: record, or the log band's (below)
  int32_t band_a;        // log band (band_b > 0): see LogBand
  int32_t band_b;
  int32_t inline_merge;  // 1: fused_kernel merges each tensor's chunk states (work_split())
  LogCoder lc;           // log: record slots (kHistHeader + bucket; 0, 1, 2 for -inf, +inf, NaN)
};

static_assert(sizeof(EntryTable) + sizeof(Params) <= 32000,
              "kernel parameters must stay below the 32 KB limit");

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

// ---------------------------------------------------------------- per-thread accumulation
__device__ __forceinline__ float abs_ct(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_ct(double x) { return fabs(x); }

// Acc::has_shift
constexpr int32_t kShiftNone = 0, kShiftSet = 1, kShiftZeros = 2;

// Per-thread accumulator. The shift and the scale are common to the 32 lanes of a warp (the
// mean of the lanes' first finite values, and 1 or the power of two that brings the spread of
// its first values near 1: pick_warp_shift), so lane sums add directly at the end of a chunk and
// only the 8 warp states of a block need the Pebay merge. Sums are of d = (x - shift) * scale and
// of (x * scale)^2; the scale (exact, a power of two) keeps float32 powers of tiny- or huge-scale
// data in range.
template <class CT>
struct Acc {
  int32_t n, nan, posinf, neginf, zero;  // at most a few hundred values per thread
  // warp-uniform: kShiftNone, kShiftSet, or kShiftZeros (every finite value so far was zero: the
  // sums run with shift 0 and scale 1, where zeros add nothing, until a nonzero value sets them).
  // An int32: a bool here was spilled around the shift's pick.
  int32_t has_shift;
  CT shift;          // warp-uniform
  CT scale, sshift;  // warp-uniform; sshift = shift * scale
  CT mn, mx;         // +inf / -inf until a finite value is seen
  double s1, s2, s3, s4, sab, ssq;
  // aligned 16-bit inputs: extremes as packed words (both halves +inf / -inf at first) and the
  // sum of the zero masks of every loaded word; folded into mn, mx and zero by packed_finish
  uint32_t pmn, pmx, pzero;
};

template <class CT>
__device__ __forceinline__ CT ct_inf() {
  return static_cast<CT>(INFINITY);
}

template <class CT>
__device__ __forceinline__ void acc_init(Acc<CT>& a) {
  a.n = a.nan = a.posinf = a.neginf = a.zero = 0;
  a.has_shift = kShiftNone;
  a.shift = CT(0);
  a.scale = CT(1);
  a.sshift = CT(0);
  a.mn = ct_inf<CT>();
  a.mx = -ct_inf<CT>();
  a.s1 = a.s2 = a.s3 = a.s4 = a.sab = a.ssq = 0.0;
  a.pmn = a.pmx = a.pzero = 0u;
}

// Packed accumulators of a 16-bit input: +inf / -inf in both halves, no zeros.
template <class T, class CT>
__device__ __forceinline__ void packed_init(Acc<CT>& a) {
  constexpr uint32_t inf = std::is_same_v<T, half_t> ? 0x7c00u : 0x7f80u;
  a.pmn = inf | (inf << 16);
  a.pmx = (inf | 0x8000u) * 0x00010001u;
  a.pzero = 0u;
}

// Fold the packed accumulators into mn, mx and zero (the extremes only when the thread counted no
// infinity: otherwise the caller rescans).
template <class T, class CT>
__device__ __forceinline__ void packed_finish(Acc<CT>& a) {
  a.zero += zero_count_from_masks(a.pzero);
  if (a.posinf + a.neginf != 0) return;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const CT lo = half_to_float<T>((a.pmn >> (16 * k)) & 0xffffu);
    const CT hi = half_to_float<T>((a.pmx >> (16 * k)) & 0xffffu);
    a.mn = lo < a.mn ? lo : a.mn;
    a.mx = hi > a.mx ? hi : a.mx;
  }
}

// Histogram context of one block: shared counters (privatised) or the tensor's global record.
struct HistCtx {
  unsigned int* sh;  // block-uniform: nullptr when the counters are in global memory
  unsigned long long* g;
  UniformLayout ul;
  LogCoder lc;
  int32_t lo, hi;          // touched finite buckets (log)
  int32_t band_a, band_b;  // log band in shared memory (band_b > 0; see LogBand), else 0, 0
};

// Shared counter of the log record slot `slot` (a finite value's, >= kHistHeader) when the
// shared counters hold a band (LogBand): kHistHeader for the zero bucket, kHistHeader + 1 + j for
// bucket C - (a + j) and kHistHeader + 1 + b + j for bucket C + a + j (0 <= j < b); -1 outside.
__device__ __forceinline__ int32_t band_counter(int32_t slot, const HistCtx& h) {
  const int32_t r = slot - h.lc.base;  // signed distance from the zero bucket
  const int32_t off = r < 0 ? -r : r;
  if (off == 0) return kHistHeader;
  const uint32_t j = static_cast<uint32_t>(off - h.band_a);
  if (j >= static_cast<uint32_t>(h.band_b)) return -1;
  return kHistHeader + 1 + static_cast<int32_t>(j) + (r > 0 ? h.band_b : 0);
}

// Inverse of band_counter: the record slot counted by shared counter i (kHistHeader <= i).
__device__ __forceinline__ int32_t band_slot(int32_t i, const HistCtx& h) {
  if (i == kHistHeader) return h.lc.base;
  const int32_t j = i - kHistHeader - 1;
  return j < h.band_b ? h.lc.base - (h.band_a + j) : h.lc.base + h.band_a + (j - h.band_b);
}

__device__ __forceinline__ uint32_t f32_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t f32_bits(double v) {
  return __float_as_uint(static_cast<float>(v));
}

// Record slot of a value: counts at kHistHeader + bin, underflow 0, overflow 1, NaN 2. kWindow:
// also widen the touched log window by the value (the callers that know the extremes of the
// values they count skip it).
template <int kHist, bool kWindow, class CT>
__device__ __forceinline__ int64_t hist_slot(HistCtx& h, CT v) {
  if constexpr (kHist == kHistUniform) {
    const int64_t c = uniform_bin(static_cast<double>(v), h.ul);
    if (c >= 0) return kHistHeader + c;
    return c == kBinUnder ? 0 : (c == kBinOver ? 1 : 2);
  } else {
    const int32_t slot = log_code(f32_bits(v), h.lc);
    if constexpr (kWindow) {
      if (slot >= kHistHeader) {
        h.lo = min(h.lo, slot - kHistHeader);
        h.hi = max(h.hi, slot - kHistHeader);
      }
    }
    return slot;
  }
}

// Add one per lane to the global record slot of each lane (slot < 0: none), the lanes with the
// same slot aggregated into one atomic. Called by all 32 lanes of the warp together.
__device__ __forceinline__ void global_add_aggregated(HistCtx& h, long long slot) {
  const unsigned peers = __match_any_sync(kFullMask, slot);
  if (slot >= 0 && static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1) {
    atomicAdd(&h.g[slot], static_cast<unsigned long long>(__popc(peers)));
  }
}

// Count one value (ok false: padding). Called by all 32 lanes of the warp together: on the global
// path, lanes with the same slot are aggregated into one atomic.
template <int kHist, bool kWindow, class CT>
__device__ __forceinline__ void hist_add(HistCtx& h, CT v, bool ok) {
  const long long slot = ok ? hist_slot<kHist, kWindow>(h, v) : -1;
  if (h.sh != nullptr) {
    if constexpr (kHist == kHistLogBand) {
      long long outside = -1;  // a bucket outside the band (rare by the band's choice)
      if (slot >= 0) {
        const int32_t c = slot >= kHistHeader ? band_counter(static_cast<int32_t>(slot), h)
                                              : static_cast<int32_t>(slot);
        if (c >= 0) {
          atomicAdd(&h.sh[c], 1u);
        } else {
          outside = slot;
        }
      }
      if (__ballot_sync(kFullMask, outside >= 0) != 0u) global_add_aggregated(h, outside);
    } else {
      if (slot >= 0) atomicAdd(&h.sh[static_cast<int32_t>(slot)], 1u);
    }
  } else {
    global_add_aggregated(h, slot);
  }
}

// Minimum and maximum of two finite values: one FMNMX for float (which of -0 and +0 comes out is
// not specified; the engine's min and max compare zeros as equal, as on the CPU); double keeps
// the compare and select, which is shorter than fmin's NaN handling there.
__device__ __forceinline__ float min_ct(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double min_ct(double a, double b) { return b < a ? b : a; }
__device__ __forceinline__ float max_ct(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_ct(double a, double b) { return b > a ? b : a; }

__device__ __forceinline__ bool is_finite_ct(float x) { return fabsf(x) <= 3.402823466e+38f; }
__device__ __forceinline__ bool is_finite_ct(double x) {
  return fabs(x) <= 1.7976931348623157e+308;
}

__device__ __forceinline__ float recip_ct(float x) { return __frcp_rn(x); }
__device__ __forceinline__ double recip_ct(double x) { return __drcp_rn(x); }
__device__ __forceinline__ int ilogb_ct(float x) { return ilogbf(x); }
__device__ __forceinline__ int ilogb_ct(double x) { return ilogb(x); }

// Warp-wide integer sum, minimum and maximum, the result on every lane: one REDUX instruction on
// sm_80 and newer (and on the host emulator), five shuffles and additions before.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define PWS_HAS_REDUX 0
#else
#define PWS_HAS_REDUX 1
#endif

__device__ __forceinline__ int32_t warp_add_i32(int32_t v) {
#if PWS_HAS_REDUX
  return __reduce_add_sync(kFullMask, v);
#else
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
#endif
}

// A float's bits as an int32 that orders like the float (-0 just below +0; no NaN here): the
// map is its own inverse.
__device__ __forceinline__ int32_t ordered_bits(int32_t i) { return i ^ ((i >> 31) & 0x7fffffff); }

template <bool kMax>
__device__ __forceinline__ float warp_extreme(float x) {
  int32_t k = ordered_bits(static_cast<int32_t>(f32_bits(x)));
#if PWS_HAS_REDUX
  k = kMax ? __reduce_max_sync(kFullMask, k) : __reduce_min_sync(kFullMask, k);
#else
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const int32_t o = __shfl_xor_sync(kFullMask, k, off);
    k = kMax ? max(k, o) : min(k, o);
  }
#endif
  return float_from_bits(static_cast<uint32_t>(ordered_bits(k)));
}

template <bool kMax>
__device__ __forceinline__ double warp_extreme(double x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const double o = __shfl_xor_sync(kFullMask, x, off);
    x = kMax ? (o > x ? o : x) : (o < x ? o : x);
  }
  return x;
}

// Largest |log2| of a spread that the power sums take unscaled. With the scale at 1 the float32
// sums of d^4 overflow (sending the group to the float64 slow path) only for |d| beyond 2^31, at
// least 2^14 times the first values' spread (scaled sums: 2^31 times), and only the d^4 of values
// within 2^-15 times that spread of the shift, below 2^-60 of the spread's own d^4, fall into
// subnormals (where they still add with an absolute error of 2^-149).
constexpr int kUnitScaleExp = 16;

// Give the warp its common shift (the mean over the lanes of each lane's first finite value in
// this group: one atypical value moves it by 1/32 of its distance, where that value taken as the
// shift would make the power sums of the whole warp cancel) and scale: 2^-e for the spread, the
// largest |x - shift| among those first values (a sample: the scale only keeps the power sums in
// range, and a group beyond it takes the float64 path), or among all the group's finite values
// when the sample's are all equal; 1 when the spread lies within 2^+-kUnitScaleExp or overflows.
// When every finite value of the group equals the shift, there is no spread: a nonzero shift sets
// the scale from |shift| (never 1 by the unit rule, so that later values an ulp away keep their
// d^4 out of the subnormals), and a zero shift leaves the warp in kShiftZeros, picking again in
// its next groups; the first pick after that adds the zeros counted so far to the power sums
// under the new shift. Within 2^+-120.
// Called by all 32 lanes together while the warp has no shift yet (warp-uniform); the sum is
// reduced towards lane 0 and broadcast, so every lane gets the same bits. Kept in the compute
// precision: it runs once per warp and chunk, and wider arithmetic here costs the main loop
// registers. A lane's first value is nearly always finite: the search past it is a branch.
template <class CT, int N>
__device__ __forceinline__ void pick_warp_shift(Acc<CT>& a, const CT (&v)[N], const bool (&ok)[N]) {
  CT cand = v[0];
  bool have = ok[0] && is_finite_ct(v[0]);
  if (!have) {
#pragma unroll
    for (int j = 1; j < N; ++j) {
      if (!have && ok[j] && is_finite_ct(v[j])) {
        cand = v[j];
        have = true;
      }
    }
    if (!have) cand = CT(0);
  }
  const unsigned lanes = __ballot_sync(kFullMask, have);
  if (lanes == 0u) return;
  CT part = cand * CT(1.0 / 32.0);  // exact; no overflow when summing 32 of them
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) part += __shfl_down_sync(kFullMask, part, off);
  const CT mean32 = __shfl_sync(kFullMask, part, 0);
  CT shift = lanes == kFullMask ? mean32  // the common case: every lane has one
                                : mean32 * (CT(32) * recip_ct(static_cast<CT>(__popc(lanes))));
  if (!is_finite_ct(shift)) shift = __shfl_sync(kFullMask, cand, __ffs(lanes) - 1);
  // the same on every lane (a maximum: any order); infinite where the difference overflows
  CT spread = warp_extreme<true>(have ? abs_ct(cand - shift) : CT(0));
  if (spread == CT(0)) {  // the sample's values are all equal: the whole group's spread
    CT all = CT(0);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (ok[j] && is_finite_ct(v[j])) all = fmax(all, abs_ct(v[j] - shift));
    }
    spread = warp_extreme<true>(all);
  }
  int e = 0;
  if (spread > CT(0)) {
    e = is_finite_ct(spread) ? max(-120, min(120, ilogb_ct(spread))) : 0;
    // a spread within 2^+-kUnitScaleExp needs no scaling: its fourth powers stay far inside
    // the float range, and the fast path saves the multiplication of every value by the scale
    if (abs(e) <= kUnitScaleExp) e = 0;
  } else if (shift != CT(0)) {
    e = max(-120, min(120, ilogb_ct(abs_ct(shift))));
  } else {  // only zeros so far: wait for a nonzero value (shift 0 and scale 1 until then)
    a.has_shift = kShiftZeros;
    return;
  }
  const CT scale = static_cast<CT>(ldexpf(1.0f, -e));
  const CT sshift = shift * scale;
  if (a.has_shift == kShiftZeros) {
    // the zeros counted so far (all of this lane's finite values, summed as 0 under shift 0):
    // each has d = -sshift under the new shift
    const double n0 = static_cast<double>(a.n), z = -static_cast<double>(sshift), z2 = z * z;
    a.s1 += n0 * z;
    a.s2 += n0 * z2;
    a.s3 += n0 * (z2 * z);
    a.s4 += n0 * (z2 * z2);
  }
  a.shift = shift;
  a.scale = scale;
  a.sshift = sshift;
  a.has_shift = kShiftSet;
}

// The log window of a chunk comes from the extremes of its finite values (buckets are monotone in
// the value) where the moments are computed in float32; float64 values may overflow float32,
// so their window is tracked value by value.
template <bool kState, class CT>
constexpr bool kWindowFromExtremes = kState && std::is_same_v<CT, float>;

// Power sums of a group of values that are all present and finite, in the compute precision,
// and (without kPacked) their extremes and zero count. The sums start at -0, which an addition
// or a fused multiply-add leaves out exactly, so the first value costs no addition.
// kUnit: the warp's scale is 1, so x * scale is x and needs no multiplication.
template <class CT>
struct GroupSums {
  // float inputs count zeros in a float (exact: at most N), FSET and FADD per value instead of
  // a compare and two integer instructions
  using ZT = std::conditional_t<std::is_same_v<CT, float>, float, int32_t>;
  CT p1, p2, p3, p4, pab, psq, mn, mx;
  ZT zeros;
};

template <bool kUnit, bool kPacked, class CT, int N>
__device__ __forceinline__ GroupSums<CT> group_sums(const Acc<CT>& a, const CT (&v)[N]) {
  using ZT = typename GroupSums<CT>::ZT;
  GroupSums<CT> g;
  g.p1 = g.p2 = g.p3 = g.p4 = g.pab = g.psq = CT(-0.0);
  g.mn = g.mx = v[0];
  g.zeros = ZT(0);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const CT xs = kUnit ? v[j] : v[j] * a.scale;
    const CT d = xs - a.sshift;
    const CT d2 = d * d;
    g.p1 += d;
    g.p2 += d2;
    g.p3 += d2 * d;
    g.p4 += d2 * d2;
    g.pab += abs_ct(v[j]);
    g.psq += xs * xs;
    if constexpr (!kPacked) {
      g.mn = min_ct(g.mn, v[j]);  // all finite here: FMNMX instead of a compare and a select
      g.mx = max_ct(g.mx, v[j]);
      g.zeros += (v[j] == CT(0)) ? ZT(1) : ZT(0);
    }
  }
  return g;
}

constexpr int kScaleAny = 0, kScaleOne = 1, kScaleSet = 2;

// Consume a group of N values (ok[j] false for padding). Called by every thread of the block the
// same number of times.
//
// Fast path (no padding, every value finite): the power sums of the group are summed in the
// compute precision without any per-value test, then added into float64; one check of the group
// (a NaN or infinity, or an overflow, makes a sum non-finite) sends the rare failing groups to the
// slow path, which sums their finite values directly in float64 and counts NaN and infinities.
//
// kPacked: the values' extremes and zeros are already in the packed accumulators (fold_words).
// kScale: kScaleAny tests whether the warp has its shift (and picks it) and which scale it has;
// kScaleOne and kScaleSet are for a warp that has its shift, with scale 1 or another scale.
template <bool kState, int kHist, bool kPacked = false, int kScale = kScaleAny, class CT, int N>
__device__ __forceinline__ void consume(Acc<CT>& a, HistCtx& h, const CT (&v)[N],
                                        const bool (&ok)[N]) {
  bool fast = false;  // every value present and finite (and its power sums in range)
  if constexpr (kState) {
    if constexpr (kScale == kScaleAny) {
      if (a.has_shift != kShiftSet) pick_warp_shift(a, v, ok);
    }
    bool all_ok = kScale != kScaleAny || a.has_shift != kShiftNone;
#pragma unroll
    for (int j = 0; j < N; ++j) all_ok = all_ok && ok[j];
    if (all_ok) {
      // the warp's scale is 1 for data of ordinary magnitude (pick_warp_shift): the values
      // then need no multiplication, one instruction per value fewer
      GroupSums<CT> g;
      if constexpr (kScale == kScaleOne) {
        g = group_sums<true, kPacked>(a, v);
      } else if constexpr (kScale == kScaleSet) {
        g = group_sums<false, kPacked>(a, v);
      } else {
        g = a.scale == CT(1) ? group_sums<true, kPacked>(a, v) : group_sums<false, kPacked>(a, v);
      }
      // the three are sums of non-negative terms (or NaN): their sum is finite exactly when
      // each is, or overflows (and the group takes the slow path) only near the float limit
      fast = is_finite_ct(g.p4 + g.psq + g.pab);
      if (fast) {
        a.n += N;
        if constexpr (!kPacked) {
          a.zero += static_cast<int32_t>(g.zeros);
          a.mn = g.mn < a.mn ? g.mn : a.mn;
          a.mx = g.mx > a.mx ? g.mx : a.mx;
        }
        a.s1 += static_cast<double>(g.p1);
        a.s2 += static_cast<double>(g.p2);
        a.s3 += static_cast<double>(g.p3);
        a.s4 += static_cast<double>(g.p4);
        a.sab += static_cast<double>(g.pab);
        a.ssq += static_cast<double>(g.psq);
      }
    }
    if (!fast) {
      const double scale = static_cast<double>(a.scale), shift = static_cast<double>(a.shift);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        if (!ok[j]) continue;
        if constexpr (!kPacked) a.zero += (v[j] == CT(0)) ? 1 : 0;
        if (is_finite_ct(v[j])) {  // a finite value implies the warp has a shift
          const double x = static_cast<double>(v[j]);
          const double d = (x - shift) * scale, d2 = d * d, xs = x * scale;
          a.s1 += d;
          a.s2 += d2;
          a.s3 += d2 * d;
          a.s4 += d2 * d2;
          a.sab += fabs(x);
          a.ssq += xs * xs;
          if constexpr (!kPacked) {
            a.mn = v[j] < a.mn ? v[j] : a.mn;
            a.mx = v[j] > a.mx ? v[j] : a.mx;
          }
          ++a.n;
        } else if (v[j] != v[j]) {
          ++a.nan;
        } else if (v[j] > CT(0)) {
          ++a.posinf;
        } else {
          ++a.neginf;
        }
      }
    }
  }
  if constexpr (kHist != kHistNone) {
    constexpr bool kWindow = is_log(kHist) && !kWindowFromExtremes<kState, CT>;
    if constexpr (kHist == kHistLog && !kWindow) {  // (kHistLogBand: per value, below)
      // the common case: a short formula and one atomic per value
      if (fast && h.sh != nullptr) {
#pragma unroll
        for (int j = 0; j < N; ++j) atomicAdd(&h.sh[log_code_finite(f32_bits(v[j]), h.lc)], 1u);
        return;
      }
    }
#pragma unroll
    for (int j = 0; j < N; ++j) hist_add<kHist, kWindow>(h, v[j], ok[j]);
  }
}

// ---------------------------------------------------------------- reductions
__device__ __forceinline__ MomentState shfl_down_state(const MomentState& s, int off) {
  MomentState o;
  o.n = static_cast<int64_t>(__shfl_down_sync(kFullMask, static_cast<long long>(s.n), off));
  o.nan = static_cast<int64_t>(__shfl_down_sync(kFullMask, static_cast<long long>(s.nan), off));
  o.posinf =
      static_cast<int64_t>(__shfl_down_sync(kFullMask, static_cast<long long>(s.posinf), off));
  o.neginf =
      static_cast<int64_t>(__shfl_down_sync(kFullMask, static_cast<long long>(s.neginf), off));
  o.zero = static_cast<int64_t>(__shfl_down_sync(kFullMask, static_cast<long long>(s.zero), off));
  o.mean = __shfl_down_sync(kFullMask, s.mean, off);
  o.m2 = __shfl_down_sync(kFullMask, s.m2, off);
  o.m3 = __shfl_down_sync(kFullMask, s.m3, off);
  o.m4 = __shfl_down_sync(kFullMask, s.m4, off);
  o.min = __shfl_down_sync(kFullMask, s.min, off);
  o.max = __shfl_down_sync(kFullMask, s.max, off);
  o.sum_abs = __shfl_down_sync(kFullMask, s.sum_abs, off);
  o.sum_sq = __shfl_down_sync(kFullMask, s.sum_sq, off);
  return o;
}

// Lane 0 ends with the merge of the states of lanes [0, 2 * first) (fixed tree).
__device__ __forceinline__ MomentState warp_merge(MomentState s, int first = 16) {
#pragma unroll
  for (int off = first; off > 0; off >>= 1) {
    const MomentState o = shfl_down_state(s, off);
    moment_merge(s, o);
  }
  return s;
}

// np.linspace(lo, hi, bins + 1)[i], operation for operation (no FMA contraction).
__device__ __forceinline__ double linspace_at(int64_t i, int64_t bins, double lo, double hi) {
  if (i == bins) return hi;
  const double div = static_cast<double>(bins);
  const double delta = __dsub_rn(hi, lo);
  const double step = __ddiv_rn(delta, div);
  const double fi = static_cast<double>(i);
  if (step == 0.0) return __dadd_rn(__dmul_rn(__ddiv_rn(fi, div), delta), lo);
  return __dadd_rn(__dmul_rn(fi, step), lo);
}

// ---------------------------------------------------------------- kernels
// Lane 0 ends with the plain sums of the warp's accumulators (they share the warp's shift); the
// counts and extremes end on every lane.
template <class CT>
__device__ __forceinline__ void warp_sum(Acc<CT>& a) {
  a.n = warp_add_i32(a.n);
  a.nan = warp_add_i32(a.nan);
  a.posinf = warp_add_i32(a.posinf);
  a.neginf = warp_add_i32(a.neginf);
  a.zero = warp_add_i32(a.zero);
  a.mn = warp_extreme<false>(a.mn);
  a.mx = warp_extreme<true>(a.mx);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    a.s1 += __shfl_down_sync(kFullMask, a.s1, off);
    a.s2 += __shfl_down_sync(kFullMask, a.s2, off);
    a.s3 += __shfl_down_sync(kFullMask, a.s3, off);
    a.s4 += __shfl_down_sync(kFullMask, a.s4, off);
    a.sab += __shfl_down_sync(kFullMask, a.sab, off);
    a.ssq += __shfl_down_sync(kFullMask, a.ssq, off);
  }
}

// Vector loads in flight per thread and loop iteration (64 bytes), and values per group whose
// power sums are added in the compute precision before going to float64.
constexpr int kLoads = 4;
constexpr int kGroup = 16;

// Extremes of the finite values among this thread's vectors of the chunk (x[i * V ...] for
// i = tid, tid + kThreads, ... < nv), read again: for a thread whose packed extremes took in an
// infinity. Infinite weights are rare, so this second read costs nothing in practice.
template <class CT>
struct Extremes {
  CT mn, mx;
};

template <class T, class CT>
__device__ __noinline__ Extremes<CT> rescan_extremes(const T* x, int64_t nv, CT mn, CT mx) {
  constexpr int V = VecWidth<T>::value;
  for (int64_t i = threadIdx.x; i < nv; i += kThreads) {
    CT v[V];
    unpack_to<T>(load_raw(x + i * V), v);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (is_finite_ct(v[j])) {
        mn = v[j] < mn ? v[j] : mn;
        mx = v[j] > mx ? v[j] : mx;
      }
    }
  }
  return Extremes<CT>{mn, mx};
}

// Consume the kLoads vector loads of one step of the aligned loop (in[u] false: padding), in
// groups of kGroup values.
template <class T, bool kState, int kHist, int kScale>
__device__ __forceinline__ void consume_loads(const typename Raw<T>::type (&raw)[kLoads],
                                              const bool (&in)[kLoads], HistCtx& h,
                                              Acc<typename Compute<T>::type>& a) {
  using CT = typename Compute<T>::type;
  constexpr int V = VecWidth<T>::value;
  constexpr int G = V * kLoads < kGroup ? V * kLoads : kGroup;  // values per group
  constexpr int kGroups = V * kLoads / G;
  constexpr bool kPacked = kState && sizeof(T) == 2;
  if constexpr (kPacked) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) fold_words<T>(raw[u], a.pmn, a.pmx, a.pzero);
  }
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    CT vals[G];
    bool ok[G];
#pragma unroll
    for (int u = 0; u < G / V; ++u) unpack_to<T>(raw[g * (G / V) + u], vals + u * V);
#pragma unroll
    for (int j = 0; j < G; ++j) ok[j] = in[(g * G + j) / V];
    consume<kState, kHist, kPacked, kScale>(a, h, vals, ok);
  }
}

// One step of the aligned loop: kLoads vector loads per thread from p (this thread's first
// vector of the step) on, kThreads vectors apart. kFull: all of them lie inside the chunk (no
// tests); otherwise the loads from `left` vectors past p on are padding.
template <class T, bool kState, int kHist, int kScale, bool kFull>
__device__ __forceinline__ void loop_step(const typename Raw<T>::type* p, int64_t left, HistCtx& h,
                                          Acc<typename Compute<T>::type>& a) {
  typename Raw<T>::type raw[kLoads];
  bool in[kLoads];
#pragma unroll
  for (int u = 0; u < kLoads; ++u) {
    in[u] = kFull || u * kThreads < left;
    raw[u] = in[u] ? __ldg(p + u * kThreads) : padding_raw<T>();
  }
  consume_loads<T, kState, kHist, kScale>(raw, in, h, a);
}

// Accumulate the chunk [start, start + len) of e into a (and h). kAlignedOnly: the caller
// guarantees e.aligned (no strided code is generated). Called by all threads of the block; only
// warp-level synchronisation inside.
template <class T, bool kState, int kHist, bool kAlignedOnly>
__device__ __forceinline__ void accumulate_chunk(const Entry& e, int64_t start, int64_t len,
                                                 HistCtx& h, Acc<typename Compute<T>::type>& a) {
  using CT = typename Compute<T>::type;
  const int tid = static_cast<int>(threadIdx.x);
  const T* base = static_cast<const T*>(e.data);
  if (kAlignedOnly || e.aligned) {
    constexpr int V = VecWidth<T>::value;
    const T* x = base + start;
    const int64_t nv = len / V;
    constexpr bool kPacked = kState && sizeof(T) == 2;
    if constexpr (kPacked) packed_init<T>(a);
    // whole steps (every load of every thread in the chunk: no tests; a pointer and a 32-bit
    // count, since a chunk has at most kMaxChunk values), then the rest
    constexpr int kStep = kLoads * kThreads;
    using RT = typename Raw<T>::type;
    const int steps = static_cast<int>(nv / kStep);
    const RT* p = reinterpret_cast<const RT*>(x) + tid;
    int step = 0;
    if constexpr (kState && kHist == kHistNone && sizeof(T) == 2) {
      // Moments only: once the warp has its shift (after its first step, unless all its first
      // values are NaN or infinite), the rest of the chunk runs a loop made for its scale, with
      // neither test in its groups. Histogram kernels keep the tests: their loops are long
      // enough without three copies.
      for (; step < steps && a.has_shift != kShiftSet; ++step, p += kStep)
        loop_step<T, kState, kHist, kScaleAny, true>(p, 0, h, a);
      if (a.scale == CT(1)) {
        for (; step < steps; ++step, p += kStep)
          loop_step<T, kState, kHist, kScaleOne, true>(p, 0, h, a);
      } else {
        for (; step < steps; ++step, p += kStep)
          loop_step<T, kState, kHist, kScaleSet, true>(p, 0, h, a);
      }
    } else {
      for (; step < steps; ++step, p += kStep)
        loop_step<T, kState, kHist, kScaleAny, true>(p, 0, h, a);
    }
    const int64_t full = static_cast<int64_t>(steps) * kStep;  // vectors of the whole steps
    if (full < nv) {
      // from x rather than from p: p kept alive past the loops cost two moves per step
      const RT* q = reinterpret_cast<const RT*>(x) + full + tid;
      loop_step<T, kState, kHist, kScaleAny, false>(q, nv - full - tid, h, a);
    }
    if constexpr (kPacked) {
      packed_finish<T>(a);
      if (a.posinf + a.neginf != 0) {
        const Extremes<CT> r = rescan_extremes<T, CT>(x, nv, a.mn, a.mx);
        a.mn = r.mn;
        a.mx = r.mx;
      }
    }
    const int64_t done = nv * V;
    if (done < len) {  // fewer than V values left (last chunk of a tensor); block-uniform
      const int64_t i = done + tid;
      bool ok[1] = {i < len};
      CT v[1] = {ok[0] ? static_cast<CT>(load1(x + i)) : CT(0)};
      consume<kState, kHist>(a, h, v, ok);
    }
  } else if constexpr (!kAlignedOnly) {
    constexpr int U = 4;
    for (int64_t i0 = 0; i0 < len; i0 += U * kThreads) {
      CT v[U];
      bool ok[U];
#pragma unroll
      for (int j = 0; j < U; ++j) {
        const int64_t i = i0 + j * kThreads + tid;
        ok[j] = i < len;
        v[j] = ok[j] ? static_cast<CT>(load1(base + strided_offset(e, start + i))) : CT(0);
      }
      consume<kState, kHist>(a, h, v, ok);
    }
  }
}

// The plain sums of one warp (its lanes share the shift and scale), as lane 0 leaves them in
// shared memory for the block's state.
struct WarpSums {
  int32_t n, nan, posinf, neginf, zero;
  double shift, scale;
  double s[4];  // sums of d, d^2, d^3, d^4 (d = (x - shift) * scale)
  double sab, ssq, mn, mx;
};

// The MomentState of a warp's sums: one lane per warp, so that the 8 conversions of a block
// (divisions included) issue once, in warp 0, instead of once in each warp.
__device__ __forceinline__ MomentState state_of_sums(const WarpSums& w) {
  MomentState s = moment_identity();
  s.nan = w.nan;
  s.posinf = w.posinf;
  s.neginf = w.neginf;
  s.zero = w.zero;
  if (w.n > 0) {
    s.n = w.n;
    const double u = 1.0 / w.scale;  // exact: a power of two
    const double u2 = u * u;
    moments_from_shifted_sums(static_cast<double>(w.n), w.shift, w.s[0] * u, w.s[1] * u2,
                              w.s[2] * (u2 * u), w.s[3] * (u2 * u2), &s.mean, &s.m2, &s.m3, &s.m4);
    s.min = w.mn;
    s.max = w.mx;
    s.sum_abs = w.sab;
    s.sum_sq = w.ssq * u2;
  }
  return s;
}

template <class T, bool kState, int kHist, bool kAlignedOnly>
__device__ __forceinline__ void run_chunk(const Entry& e, int64_t start, int64_t len, HistCtx& h,
                                          MomentState* chunk_out, WarpSums* warp_sums) {
  using CT = typename Compute<T>::type;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  Acc<CT> a;
  acc_init(a);
  accumulate_chunk<T, kState, kHist, kAlignedOnly>(e, start, len, h, a);
  if constexpr (is_log(kHist) && kWindowFromExtremes<kState, CT>) {
    if (a.mn <= a.mx) {  // the thread counted a finite value
      h.lo = min(h.lo, log_code_finite(f32_bits(a.mn), h.lc) - kHistHeader);
      h.hi = max(h.hi, log_code_finite(f32_bits(a.mx), h.lc) - kHistHeader);
    }
  }
  if constexpr (kState) {
    warp_sum(a);
    if (lane == 0) {
      warp_sums[warp] = WarpSums{a.n,
                                 a.nan,
                                 a.posinf,
                                 a.neginf,
                                 a.zero,
                                 static_cast<double>(a.shift),
                                 static_cast<double>(a.scale),
                                 {a.s1, a.s2, a.s3, a.s4},
                                 a.sab,
                                 a.ssq,
                                 static_cast<double>(a.mn),
                                 static_cast<double>(a.mx)};
    }
    __syncthreads();
    if (warp == 0) {
      MomentState s = lane < kWarps ? state_of_sums(warp_sums[lane]) : moment_identity();
      s = warp_merge(s, kWarps / 2);
      if (lane == 0) *chunk_out = s;
    }
  }
}

// ---------------------------------------------------------------- merge of chunk states
// The chunk states of a tensor are merged by merge_kernel, launched right after the fused kernel
// with programmatic dependent launch where the GPU has it (sm_90: its blocks are resident before
// the fused kernel ends and start as soon as its memory is visible, so the second launch costs no
// launch gap). One block per merge unit: a tensor of at most kMergeGroup (work_split()) chunks is
// one unit; a larger one has a unit per group of kMergeGroup chunks, and the last of its group
// blocks to finish (an arrival ticket per tensor) merges the group states. The merge order is fixed
// (it does not depend on which block arrives last), so results stay bit-identical run to run.
//
// The fused kernel's blocks only store their chunk state and exit. Merging there instead, by the
// last block to finish a tensor's chunks, made every block wait for its state to reach L2 and for
// an atomic's round trip before exiting; under the pass's full memory load that cost an H200
// about 10 % of the float32 pass (measured 2026-11-27: 1034 us at 10^9, against ~930 us before).

// Programmatic dependent launch (PTX griddepcontrol, sm_90 and newer; no-ops elsewhere and on the
// host emulator): a block of the fused kernel lets the dependent merge launch be scheduled, and
// the merge kernel waits until the fused kernel has completed and its writes are visible.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_prerequisite_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// A state written by another block (of this launch or the fused kernel): read around L1.
__device__ __forceinline__ MomentState load_state_cg(const MomentState* q) {
  MomentState s;
  s.n = __ldcg(&q->n);
  s.nan = __ldcg(&q->nan);
  s.posinf = __ldcg(&q->posinf);
  s.neginf = __ldcg(&q->neginf);
  s.zero = __ldcg(&q->zero);
  s.mean = __ldcg(&q->mean);
  s.m2 = __ldcg(&q->m2);
  s.m3 = __ldcg(&q->m3);
  s.m4 = __ldcg(&q->m4);
  s.min = __ldcg(&q->min);
  s.max = __ldcg(&q->max);
  s.sum_abs = __ldcg(&q->sum_abs);
  s.sum_sq = __ldcg(&q->sum_sq);
  return s;
}

// Merge src[0..n) in a fixed order (thread t: src[t], src[t + kThreads], ...; then the warps'
// shuffle trees, then the 8 warp states); the result is valid in thread 0. Called by all threads.
__device__ MomentState block_merge_states(const MomentState* src, int64_t n,
                                          MomentState* warp_states) {
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  MomentState s = moment_identity();
  for (int64_t i = tid; i < n; i += kThreads) moment_merge(s, load_state_cg(src + i));
  s = warp_merge(s);
  if (lane == 0) warp_states[warp] = s;
  __syncthreads();
  MomentState r = moment_identity();
  if (warp == 0) {
    r = lane < kWarps ? warp_states[lane] : moment_identity();
    r = warp_merge(r, kWarps / 2);
  }
  return r;
}

// Add one to *ticket with release and acquire semantics at device scope (the thread's earlier
// writes are visible to whoever sees the increment, and it sees the writes of those whose
// increments it saw); the old value. One acq_rel atomic where the target has it, instead of two
// full fences around a relaxed one.
__device__ __forceinline__ unsigned int arrive(unsigned int* ticket) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  unsigned int old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(ticket) : "memory");
  return old;
#else
  __threadfence();
  const unsigned int old = atomicAdd(ticket, 1u);
  __threadfence();
  return old;
#endif
}

// Whether this block is the last of `count` to arrive at *ticket (block-uniform). Everything the
// block wrote before the call is visible device-wide before its arrival counts.
__device__ __forceinline__ bool last_arrival(unsigned int* ticket, int64_t count, int* flag) {
  __syncthreads();
  if (threadIdx.x == 0) *flag = arrive(ticket) == static_cast<unsigned int>(count - 1) ? 1 : 0;
  __syncthreads();
  return *flag != 0;
}

// A tensor's merged state (in thread 0): store it; for kEdgesData also its bin edges
// (np.linspace over its finite range). Called by all threads.
__device__ void finish_tensor(const Params& p, int64_t gt, const MomentState& r,
                              MomentState* warp_states) {
  if (threadIdx.x == 0) {
    p.states[gt] = r;
    warp_states[0] = r;
  }
  if (p.edge_mode != kEdgesData) return;
  __syncthreads();
  const MomentState& m = warp_states[0];
  double lo = m.n > 0 ? m.min : 0.0;
  double hi = m.n > 0 ? m.max : 1.0;
  if (lo == hi) {
    lo = __dsub_rn(lo, 0.5);
    hi = __dadd_rn(hi, 0.5);
  }
  double* out = p.edges + gt * p.edge_stride;
  for (int64_t i = threadIdx.x; i <= p.bins; i += kThreads) out[i] = linspace_at(i, p.bins, lo, hi);
}

// The table entry whose work items include item i: the last of the count entries whose first
// item (begin[entry], prefix sums) is <= i; a binary search.
template <class I>
__device__ __forceinline__ int entry_of(const I* begin, int count, int64_t i) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (begin[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// One block per merge unit (see above); block u finds its tensor by binary search in unit_begin.
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const __grid_constant__ EntryTable tab, const __grid_constant__ Params p) {
  __shared__ MomentState warp_states[kWarps];
  __shared__ int last_flag;
  wait_for_prerequisite_grid();
  const int64_t u = blockIdx.x;
  const int t = entry_of(tab.unit_begin, tab.count, u);
  const int64_t gt = tab.index[t];
  const int64_t nch = tab.chunk_begin[t + 1] - tab.chunk_begin[t];
  const int64_t ngroups = tab.group_begin[t + 1] - tab.group_begin[t];
  const MomentState* chunks = p.scratch + tab.chunk_base + tab.chunk_begin[t];
  if (ngroups == 0) {
    finish_tensor(p, gt, block_merge_states(chunks, nch, warp_states), warp_states);
    return;
  }
  const int64_t k = u - tab.unit_begin[t];  // group of this tensor
  const int64_t first = k * tab.merge_group;
  const int64_t gi = tab.group_begin[t] + k;
  const MomentState g =
      block_merge_states(chunks + first, min(tab.merge_group, nch - first), warp_states);
  if (threadIdx.x == 0) p.scratch[tab.group_base + gi] = g;
  if (!last_arrival(p.tickets + gt, ngroups, &last_flag)) return;
  finish_tensor(
      p, gt,
      block_merge_states(p.scratch + tab.group_base + tab.group_begin[t], ngroups, warp_states),
      warp_states);
}

// PWS_CUDA_MERGE=inline (work_split): the last block of the fused kernel to finish tensor t's
// chunks merges their states in one level (tickets zeroed by a memset before the launch); no
// merge kernel. Meant for splits of about one wave of blocks, whose arrivals all come at the end.
// Out of line, so that it leaves the fused kernel's main loops as they are (inlined, it cost the
// float32 moments loop 0.12 instructions per value). Called by all threads of the block.
__device__ __noinline__ void merge_inline(const EntryTable& tab, const Params& p, int t) {
  __shared__ MomentState merge_states[kWarps];
  __shared__ int last_flag;
  const int64_t gt = tab.index[t];
  const int64_t nch = tab.chunk_begin[t + 1] - tab.chunk_begin[t];
  if (last_arrival(p.tickets + gt, nch, &last_flag)) {
    const MomentState* chunks = p.scratch + tab.chunk_base + tab.chunk_begin[t];
    finish_tensor(p, gt, block_merge_states(chunks, nch, merge_states), merge_states);
  }
}

// Blocks per SM the kernel's registers must allow: 4 (64 registers) for the moments kernels of
// the aligned kinds and the float32 log-histogram kernel, whose per-group fast paths fit without
// spills (bench/sass_spills.py), else 3.
template <int kKind, int kHist>
constexpr int kMinBlocks =
    kKind == kKindGeneric || kHist == kHistUniform || (is_log(kHist) && kKind != kKindF32) ? 3 : 4;

template <int kKind, bool kState, int kHist>
__global__ void __launch_bounds__(kThreads, kMinBlocks<kKind, kHist>)
    fused_kernel(const __grid_constant__ EntryTable tab, const __grid_constant__ Params p) {
  PWS_DYNAMIC_SHARED(unsigned char, dyn_smem);
  __shared__ WarpSums warp_sums[kWarps];
  __shared__ int32_t block_window[2];  // log: the block's touched finite buckets (lo, hi)
  allow_dependent_launch();            // every block is resident: the merge may be scheduled
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = blockIdx.x;
  const int t = entry_of(tab.chunk_begin, tab.count, b);
  const Entry& e = tab.entries[t];
  const int64_t chunk = tab.chunk[t];
  const int64_t start = (b - tab.chunk_begin[t]) * chunk;
  const int64_t len = min(chunk, e.numel - start);
  const int64_t gt = tab.index[t];
  if constexpr (kState) {
    // The merge kernel's arrival ticket of a tensor merged in groups, zeroed here instead of by a
    // memset before the launch (one node less per pass): the merge kernel reads it only after
    // this grid has completed and its writes are visible (griddepcontrol.wait, or stream order).
    if (tid == 0 && !p.inline_merge && b == tab.chunk_begin[t] &&
        tab.group_begin[t + 1] > tab.group_begin[t]) {
      p.tickets[gt] = 0u;
    }
  }

  HistCtx h;
  h.sh = nullptr;
  h.g = nullptr;
  h.lc = p.lc;
  h.lo = INT_MAX;
  h.hi = -1;
  h.band_a = p.band_a;
  h.band_b = p.band_b;
  h.ul = UniformLayout{0, 0.0, 0.0, 0.0, nullptr};
  if constexpr (kHist != kHistNone) {
    h.g = p.hist + gt * p.record;
    if (p.shared_hist) {
      unsigned int* counters = reinterpret_cast<unsigned int*>(dyn_smem);
      for (int32_t i = tid; i < p.shared_slots; i += kThreads) counters[i] = 0u;
      h.sh = counters;
      if (tid == 0) {
        block_window[0] = INT_MAX;
        block_window[1] = -1;
      }
    }
    if constexpr (kHist == kHistUniform) {
      const double* ge = p.edges + gt * p.edge_stride;
      const double* edges = ge;
      if (p.shared_hist) {
        double* se = reinterpret_cast<double*>(
            dyn_smem + (static_cast<size_t>(p.record) * sizeof(unsigned int) + 15) / 16 * 16);
        for (int64_t i = tid; i <= p.bins; i += kThreads) se[i] = ge[i];
        edges = se;
      }
      h.ul.bins = p.bins;
      h.ul.edges = edges;
      h.ul.lo = ge[0];
      h.ul.hi = ge[p.bins];
      h.ul.norm = static_cast<double>(p.bins) / (h.ul.hi - h.ul.lo);
    }
    __syncthreads();
  }

  MomentState* chunk_out = kState ? p.scratch + (tab.chunk_base + b) : nullptr;
  if constexpr (kKind == kKindF32) {
    run_chunk<float, kState, kHist, true>(e, start, len, h, chunk_out, warp_sums);
  } else if constexpr (kKind == kKindF16) {
    run_chunk<half_t, kState, kHist, true>(e, start, len, h, chunk_out, warp_sums);
  } else if constexpr (kKind == kKindBF16) {
    run_chunk<bfloat16_t, kState, kHist, true>(e, start, len, h, chunk_out, warp_sums);
  } else {
    switch (static_cast<DType>(e.dtype)) {
      case DType::F32:
        run_chunk<float, kState, kHist, false>(e, start, len, h, chunk_out, warp_sums);
        break;
      case DType::F64:
        run_chunk<double, kState, kHist, false>(e, start, len, h, chunk_out, warp_sums);
        break;
      case DType::F16:
        run_chunk<half_t, kState, kHist, false>(e, start, len, h, chunk_out, warp_sums);
        break;
      case DType::BF16:
        run_chunk<bfloat16_t, kState, kHist, false>(e, start, len, h, chunk_out, warp_sums);
        break;
    }
  }

  if constexpr (kHist != kHistNone) {
    if constexpr (is_log(kHist)) {  // touched window, as "nb - lo" and "hi + 1" (max-merged)
      int32_t wlo = h.lo, whi = h.hi;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        wlo = min(wlo, __shfl_down_sync(kFullMask, wlo, off));
        whi = max(whi, __shfl_down_sync(kFullMask, whi, off));
      }
      if ((tid & 31) == 0 && whi >= 0) {
        atomicMax(&h.g[3], static_cast<unsigned long long>(p.nb - wlo));
        atomicMax(&h.g[4], static_cast<unsigned long long>(whi + 1));
        if (p.shared_hist) {
          atomicMin(&block_window[0], wlo);
          atomicMax(&block_window[1], whi);
        }
      }
    }
    if (p.shared_hist) {
      __syncthreads();
      const unsigned int* counters = reinterpret_cast<const unsigned int*>(dyn_smem);
      int64_t first = 0, stop = p.record;  // uniform: every slot
      if constexpr (is_log(kHist)) {
        // Only the special slots and the block's window can be non-zero: the flush reads a few
        // hundred counters instead of all 4,070 (m = 3), which matters for small tensors.
        if (tid < 3 && counters[tid] != 0u) {
          atomicAdd(&h.g[tid], static_cast<unsigned long long>(counters[tid]));
        }
        if constexpr (kHist == kHistLog) {
          first = kHistHeader + static_cast<int64_t>(block_window[0]);
          stop = kHistHeader + static_cast<int64_t>(block_window[1]) + 1;  // empty if no window
        } else {  // kHistLogBand: the band's counters within the block's window
          const int32_t wlo = block_window[0], whi = block_window[1];  // buckets
          const int32_t c0 = h.lc.base - kHistHeader;                  // the zero bucket
          // negative side: counter kHistHeader + 1 + j is bucket c0 - a - j; positive side:
          // kHistHeader + 1 + b + j is bucket c0 + a + j (0 <= j < b); empty if no window
          const int32_t n0 = max(0, c0 - h.band_a - whi),
                        n1 = min(h.band_b - 1, c0 - h.band_a - wlo);
          const int32_t p0 = max(0, wlo - c0 - h.band_a),
                        p1 = min(h.band_b - 1, whi - c0 - h.band_a);
          const int32_t nn = max(0, n1 - n0 + 1), np = max(0, p1 - p0 + 1);
          const bool zero = wlo <= c0 && c0 <= whi;
          for (int32_t k = tid; k < nn + np + (zero ? 1 : 0); k += kThreads) {
            const int32_t i = k < nn        ? kHistHeader + 1 + n0 + k
                              : k < nn + np ? kHistHeader + 1 + h.band_b + p0 + (k - nn)
                                            : kHistHeader;
            const unsigned int c = counters[i];
            if (c != 0u) atomicAdd(&h.g[band_slot(i, h)], static_cast<unsigned long long>(c));
          }
          stop = first;  // nothing for the loop below
        }
      }
      for (int64_t i = first + tid; i < stop; i += kThreads) {
        const unsigned int c = counters[i];
        if (c != 0u && i != 3 && i != 4) atomicAdd(&h.g[i], static_cast<unsigned long long>(c));
      }
    }
  }
  if constexpr (kState) {
    if (p.inline_merge) merge_inline(tab, p, t);
  }
}

__global__ void range_edges_kernel(double* out, int64_t bins, double lo, double hi) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i <= bins) out[i] = linspace_at(i, bins, lo, hi);
}

// Tensors whose histogram records one block row of total_kernel adds up (at least).
constexpr int64_t kTotalGroup = 16;

// Block (0, 0) merges the P tensor states into slot P (fixed order, block_merge_states). With
// with_hist, block (x, y) adds columns [256 x, 256 x + 256) of the records of tensors [g y, g y +
// g) into the total record (zeroed first) with integer atomics, so the sums do not depend on the
// order; the window columns take the maximum.
__global__ void __launch_bounds__(kThreads)
    total_kernel(const Params p, int with_hist, int64_t group) {
  __shared__ MomentState warp_states[kWarps];
  if (blockIdx.x == 0 && blockIdx.y == 0) {
    const MomentState r = block_merge_states(p.states, p.tensors, warp_states);
    if (threadIdx.x == 0) p.states[p.tensors] = r;
  }
  if (with_hist) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    const int64_t t0 = static_cast<int64_t>(blockIdx.y) * group;
    const int64_t t1 = min(p.tensors, t0 + group);
    if (col < p.record) {
      const bool is_max = p.hist_kind == kHistLog && (col == 3 || col == 4);
      unsigned long long acc = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const unsigned long long v = p.hist[t * p.record + col];
        acc = is_max ? (v > acc ? v : acc) : acc + v;
      }
      unsigned long long* dst = p.hist + p.tensors * p.record + col;
      if (acc != 0) {
        if (is_max) {
          atomicMax(dst, acc);
        } else {
          atomicAdd(dst, acc);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- host side
// Devices whose shared-memory limit is cached (others query it every time).
constexpr int kCachedDevices = 64;

int device_for_cache() {
  int device = 0;
  PWS_CUDA_CHECK(cudaGetDevice(&device));
  return device < kCachedDevices ? device : -1;
}

// Shared memory of a block's whole histogram record (and the uniform edges); 0 without one.
size_t full_hist_bytes(const Request& req) {
  if (req.hist_kind == kHistUniform) {
    return round_up(static_cast<size_t>(kHistHeader + req.bins) * sizeof(unsigned int), 16) +
           static_cast<size_t>(req.bins + 1) * sizeof(double);
  }
  if (req.hist_kind == kHistLog) {
    return static_cast<size_t>(kHistHeader + log_num_buckets(req.mantissa_bits)) *
           sizeof(unsigned int);
  }
  return 0;
}

// query() (a non-negative int) for the current device, from `cache` (one slot per cached device,
// 0: not queried yet, else value + 1) after the first call on that device.
template <class Query>
int cached_per_device(std::atomic<int64_t> (&cache)[kCachedDevices], Query query) {
  const int slot = device_for_cache();
  if (slot >= 0) {
    const int64_t v = cache[slot].load(std::memory_order_relaxed);
    if (v > 0) return static_cast<int>(v - 1);
  }
  const int value = query();
  if (slot >= 0) cache[slot].store(static_cast<int64_t>(value) + 1, std::memory_order_relaxed);
  return value;
}

// An attribute of the current device (non-negative), queried once per device and attribute.
template <cudaDeviceAttr kAttr>
int device_attribute() {
  static std::atomic<int64_t> cache[kCachedDevices];
  return cached_per_device(cache, [] {
    int device = 0, value = 0;
    PWS_CUDA_CHECK(cudaGetDevice(&device));
    PWS_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, device));
    return value;
  });
}

// Dynamic shared memory a block may opt in to on the current device, less room for the kernels'
// static shared memory.
size_t shared_limit() {
  const int optin = device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>();
  return optin > 4096 ? static_cast<size_t>(optin) - 4096 : 0;
}

// Most dynamic shared memory a fused-kernel launch uses on the current device.
size_t shared_hist_max() { return std::min(kSharedHistBudget, shared_limit()); }

// A log histogram whose whole record does not fit in shared memory (m >= 6 at 72 KB) keeps a
// band of it there: the zero bucket and, for both signs, the buckets of |x| in [2^e1, 2^e2), as
// many whole octaves as fit (m = 6: 143 octaves, [2^-126, 2^17); m = 7: 71, [2^-55, 2^16); m = 8:
// 35, [2^-23, 2^12); m = 10: 8, [2^-10, 2^-2)). Values outside the band, rare for weights,
// activations and gradients, count in global memory. The band is centred on 2^-6, ends at 2^16
// at the highest unless that would start it below 2^-126, and starts at 2^-126 at the lowest. In
// buckets: C - a - j and C + a + j for 0 <= j < b (see band_counter).
struct LogBand {
  int32_t a = 0;
  int32_t b = 0;  // 0: no band
};

LogBand log_band(int m, size_t budget) {
  LogBand band;
  const int64_t per_octave = int64_t(1) << m;
  const int64_t slots = static_cast<int64_t>(budget / sizeof(unsigned int)) - kHistHeader - 1;
  const int64_t octaves = std::min<int64_t>(slots / (2 * per_octave), 254);
  if (octaves < 1) return band;
  const int64_t e1 = std::max<int64_t>(std::min<int64_t>(-6 - octaves / 2, 16 - octaves), -126);
  band.a = static_cast<int32_t>(1 + (e1 + 126) * per_octave);  // 1 + k of 2^e1 (log_bucket)
  band.b = static_cast<int32_t>(octaves * per_octave);
  return band;
}

// The band of a request on the current device: none when the whole record fits.
LogBand request_band(const Request& req) {
  if (req.hist_kind != kHistLog || full_hist_bytes(req) <= shared_hist_max()) return LogBand{};
  return log_band(req.mantissa_bits, shared_hist_max());
}

// Shared memory of a block's privatised counters (and the uniform edges); 0 without a histogram.
size_t shared_hist_bytes(const Request& req) {
  const LogBand band = request_band(req);
  if (band.b > 0) return static_cast<size_t>(kHistHeader + 1 + 2 * band.b) * sizeof(unsigned int);
  return full_hist_bytes(req);
}

// Whether a block's histogram counters (or a log band of them) fit in shared memory on the
// current device.
bool shared_hist(const Request& req) {
  const size_t need = shared_hist_bytes(req);
  return need > 0 && need <= shared_hist_max();
}

Params make_params(const Request& req, const Layout& L, void* result, void* scratch) {
  char* r = static_cast<char*>(result);
  Params p{};
  p.states = reinterpret_cast<MomentState*>(r + L.off_states);
  p.scratch = static_cast<MomentState*>(scratch);
  p.tickets = scratch != nullptr
                  ? reinterpret_cast<unsigned int*>(static_cast<char*>(scratch) + L.off_tickets)
                  : nullptr;
  p.hist = L.record > 0 ? reinterpret_cast<unsigned long long*>(r + L.off_hist) : nullptr;
  p.edges = L.edge_arrays > 0 ? reinterpret_cast<double*>(r + L.off_edges) : nullptr;
  p.tensors = L.tensors;
  p.nb = L.nb;
  p.record = L.record;
  p.bins = req.bins;
  p.edge_stride = req.edge_mode == kEdgesRange ? 0 : req.bins + 1;
  p.hist_kind = req.hist_kind;
  p.edge_mode = req.edge_mode;
  p.shared_hist = shared_hist(req) ? 1 : 0;
  const LogBand band = request_band(req);
  p.band_a = band.a;
  p.band_b = band.b;
  p.shared_slots = static_cast<int32_t>(band.b > 0 ? kHistHeader + 1 + 2 * band.b : L.record);
  p.inline_merge = work_split().inline_merge ? 1 : 0;
  p.lc = make_log_coder(req.mantissa_bits, kHistHeader, 0, 1, 2);
  return p;
}

template <int kKind, bool kState, int kHist>
void launch_kind(const dim3& g, size_t smem, cudaStream_t s, const EntryTable& tab,
                 const Params& p) {
  if (smem > 32 * 1024) {  // opt in above the default 48 KB (static shared memory included)
    // Set at every such launch (about a microsecond; the tracker's m = 3 needs 16 KB and never
    // gets here), so a device reset elsewhere in the process cannot leave it unset, and to the
    // most any launch asks for, so concurrent callers set the same value.
    PWS_CUDA_CHECK(cudaFuncSetAttribute(fused_kernel<kKind, kState, kHist>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_hist_max())));
  }
  PWS_LAUNCH(g, kThreads, smem, s, fused_kernel<kKind, kState, kHist>)(tab, p);
}

#if !defined(PWS_CUDA_EMULATION)
// Whether the merge kernel may be a programmatic dependent launch: the current device has it
// (compute capability 9.0 and newer) and the merge kernel's code on it was compiled for it (its
// griddepcontrol.wait exists from PTX 9.0 on: a build for sm_80 only, JIT-compiled for an sm_90
// device, must keep plain stream order). Queried once per device.
bool dependent_launch() {
  if (device_attribute<cudaDevAttrComputeCapabilityMajor>() < 9) return false;
  static std::atomic<int64_t> cache[kCachedDevices];
  return cached_per_device(cache, [] {
           cudaFuncAttributes attr{};
           PWS_CUDA_CHECK(cudaFuncGetAttributes(&attr, merge_kernel));
           return attr.ptxVersion;
         }) >= 90;
}
#endif

// Enqueue the merge of the chunk states of a table's tensors, right after its fused launch.
void launch_merge(const EntryTable& tab, const Params& p, cudaStream_t s) {
  const dim3 g(static_cast<unsigned>(tab.unit_begin[tab.count]));
#if defined(PWS_CUDA_EMULATION)
  PWS_LAUNCH(g, kThreads, 0, s, merge_kernel)(tab, p);
  PWS_CUDA_CHECK_LAUNCH("merge_kernel launch");
#else
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = g;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = dependent_launch() ? 1 : 0;
  PWS_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge_kernel, tab, p));
#endif
}

template <bool kState, int kHist>
void launch_fused(const EntryTable& tab, const Params& p, size_t smem, cudaStream_t s) {
  const int64_t grid = tab.chunk_begin[tab.count];
  if (grid == 0) return;
  if (grid > INT_MAX)
    throw std::runtime_error("pyweightstat: too many CUDA work items in one launch");
  const dim3 g(static_cast<unsigned>(grid));
  switch (tab.kind) {
    case kKindF32:
      launch_kind<kKindF32, kState, kHist>(g, smem, s, tab, p);
      break;
    case kKindF16:
      launch_kind<kKindF16, kState, kHist>(g, smem, s, tab, p);
      break;
    case kKindBF16:
      launch_kind<kKindBF16, kState, kHist>(g, smem, s, tab, p);
      break;
    default:
      launch_kind<kKindGeneric, kState, kHist>(g, smem, s, tab, p);
      break;
  }
  PWS_CUDA_CHECK_LAUNCH("fused_kernel launch");
  if constexpr (kState) {
    if (!p.inline_merge) launch_merge(tab, p, s);
  }
}

int32_t kernel_kind(const Entry& e) {
  if (!e.aligned) return kKindGeneric;
  switch (static_cast<DType>(e.dtype)) {
    case DType::F32:
      return kKindF32;
    case DType::F16:
      return kKindF16;
    case DType::BF16:
      return kKindBF16;
    default:
      return kKindGeneric;
  }
}

// Launch tables: entries grouped by kernel kind (in kind order, then input order), at most
// kMaxBatch per table. Deterministic in the inputs' dtypes, sizes and layouts only.
// Work items of a tensor: an empty one has one too, whose block stores its (identity) state.
// Values per work item of a tensor of numel values.
int64_t chunk_of(int64_t numel, const WorkSplit& w) {
  if (w.blocks == 0) return w.chunk;
  constexpr int64_t kQuantum = 512;  // keeps chunk starts 16-byte aligned for every dtype
  const int64_t c = (numel + w.blocks - 1) / w.blocks;
  return std::min(std::max(kMinChunk, (c + kQuantum - 1) / kQuantum * kQuantum), kMaxChunk);
}

int64_t chunks_of(int64_t numel, const WorkSplit& w) {
  const int64_t chunk = chunk_of(numel, w);
  return numel > 0 ? (numel + chunk - 1) / chunk : 1;
}

// Merge groups of a tensor: none when its chunk states fit one block.
int64_t groups_of(int64_t numel, const WorkSplit& w) {
  const int64_t c = chunks_of(numel, w);
  return c > w.merge_group ? (c + w.merge_group - 1) / w.merge_group : 0;
}

// A work-split environment variable: `fallback` when unset, else an integer in [lo, hi] (and a
// power of two where asked).
int64_t split_from_env(const char* name, int64_t fallback, int64_t lo, int64_t hi, bool pow2) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  if (errno != 0 || *end != '\0' || x < lo || x > hi || (pow2 && (x & (x - 1)) != 0)) {
    throw std::invalid_argument(std::string("pyweightstat: ") + name + "=" + v + " is not " +
                                (pow2 ? "a power of two " : "an integer ") + "in [" +
                                std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return static_cast<int64_t>(x);
}

// PWS_CUDA_MERGE: false (a merge kernel) when unset or "kernel", true for "inline".
bool merge_mode_from_env() {
  const char* v = std::getenv("PWS_CUDA_MERGE");
  if (v == nullptr || *v == '\0' || std::string(v) == "kernel") return false;
  if (std::string(v) == "inline") return true;
  throw std::invalid_argument(std::string("pyweightstat: PWS_CUDA_MERGE=") + v +
                              " is not \"kernel\" or \"inline\"");
}

std::vector<EntryTable> make_tables(const std::vector<Entry>& entries) {
  const WorkSplit w = work_split();
  std::vector<EntryTable> tables;
  int64_t chunk_base = 0;
  int64_t total_chunks = 0;  // group states follow the chunk states of every table
  for (const Entry& e : entries) total_chunks += chunks_of(e.numel, w);
  int64_t group_base = total_chunks;
  for (int32_t kind = 0; kind <= kKindGeneric; ++kind) {
    std::vector<int32_t> members;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (kernel_kind(entries[i]) == kind) members.push_back(static_cast<int32_t>(i));
    }
    for (size_t b0 = 0; b0 < members.size(); b0 += kMaxBatch) {
      const size_t n = std::min(members.size() - b0, static_cast<size_t>(kMaxBatch));
      EntryTable tab{};
      tab.count = static_cast<int32_t>(n);
      tab.kind = kind;
      tab.merge_group = w.merge_group;
      tab.chunk_base = chunk_base;
      tab.group_base = group_base;
      int64_t c = 0, gr = 0, un = 0;
      for (size_t i = 0; i < n; ++i) {
        const int32_t g = members[b0 + i];
        tab.index[i] = g;
        tab.entries[i] = entries[static_cast<size_t>(g)];
        const int64_t numel = entries[static_cast<size_t>(g)].numel;
        tab.chunk[i] = static_cast<int32_t>(chunk_of(numel, w));
        tab.chunk_begin[i] = c;
        tab.group_begin[i] = static_cast<int32_t>(gr);
        tab.unit_begin[i] = static_cast<int32_t>(un);
        const int64_t groups = groups_of(numel, w);
        c += chunks_of(numel, w);
        gr += groups;
        un += std::max<int64_t>(groups, 1);
      }
      if (un > INT_MAX) throw std::runtime_error("pyweightstat: too many CUDA merge groups");
      tab.chunk_begin[n] = c;
      tab.group_begin[n] = static_cast<int32_t>(gr);
      tab.unit_begin[n] = static_cast<int32_t>(un);
      chunk_base += c;
      group_base += gr;
      tables.push_back(tab);
    }
  }
  return tables;
}

}  // namespace

// ---------------------------------------------------------------- public launchers
WorkSplit work_split() {
  static const WorkSplit split{
      split_from_env("PWS_CUDA_CHUNK", kChunk, kMinChunk, kMaxChunk, true),
      split_from_env("PWS_CUDA_BLOCKS", 0, 1, int64_t(1) << 20, false),
      split_from_env("PWS_CUDA_MERGE_GROUP", kMergeGroup, 2, kMaxMergeGroup, false),
      merge_mode_from_env()};
  return split;
}

Layout make_layout(const std::vector<int64_t>& numels, const Request& req) {
  Layout L;
  L.tensors = static_cast<int64_t>(numels.size());
  if (req.hist_kind == kHistUniform) L.nb = req.bins;
  if (req.hist_kind == kHistLog) L.nb = log_num_buckets(req.mantissa_bits);
  L.record = req.hist_kind == kHistNone ? 0 : kHistHeader + L.nb;
  if (req.hist_kind == kHistUniform) L.edge_arrays = req.edge_mode == kEdgesRange ? 1 : L.tensors;
  const WorkSplit w = work_split();
  for (int64_t n : numels) {
    L.chunks += chunks_of(n, w);
    L.groups += groups_of(n, w);
  }
  const size_t p1 = static_cast<size_t>(L.tensors + 1);
  L.off_states = 0;
  L.off_hist = round_up(p1 * sizeof(MomentState), 256);
  L.off_edges = round_up(L.off_hist + p1 * static_cast<size_t>(L.record) * 8, 256);
  L.result_bytes = round_up(
      L.off_edges + static_cast<size_t>(L.edge_arrays) * static_cast<size_t>(req.bins + 1) * 8,
      256);
  L.off_tickets = round_up(static_cast<size_t>(L.chunks + L.groups) * sizeof(MomentState), 256);
  L.scratch_bytes =
      L.off_tickets + round_up(static_cast<size_t>(L.tensors + 1) * sizeof(unsigned), 256);
  return L;
}

void launch_describe(const std::vector<Entry>& entries, const Request& req, const Layout& L,
                     void* result, void* scratch, void* stream, const double* host_edges) {
  (void)cudaGetLastError();  // clear an error left by an earlier failed call
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const Params p = make_params(req, L, result, scratch);
  if (p.inline_merge) {  // every tensor's arrival ticket (the fused kernel merges)
    PWS_CUDA_CHECK(cudaMemsetAsync(p.tickets, 0, L.scratch_bytes - L.off_tickets, s));
  }
  if (L.record > 0) {
    PWS_CUDA_CHECK(cudaMemsetAsync(
        p.hist, 0, static_cast<size_t>(L.tensors + 1) * static_cast<size_t>(L.record) * 8, s));
  }
  if (req.hist_kind == kHistUniform) {
    if (req.edge_mode == kEdgesRange) {
      const int64_t n = req.bins + 1;
      PWS_LAUNCH(static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, s,
                 range_edges_kernel)(p.edges, req.bins, req.lo, req.hi);
      PWS_CUDA_CHECK_LAUNCH("range_edges_kernel launch");
    } else if (req.edge_mode == kEdgesExplicit) {
      PWS_CUDA_CHECK(cudaMemcpyAsync(
          p.edges, host_edges,
          static_cast<size_t>(L.tensors) * static_cast<size_t>(req.bins + 1) * sizeof(double),
          cudaMemcpyHostToDevice, s));
    }
  }
  const std::vector<EntryTable> tables = make_tables(entries);
  const size_t smem = p.shared_hist ? shared_hist_bytes(req) : 0;
  if (req.hist_kind == kHistUniform && req.edge_mode == kEdgesData) {
    for (const EntryTable& tab : tables) {
      launch_fused<true, kHistNone>(tab, p, 0, s);
    }
    for (const EntryTable& tab : tables) launch_fused<false, kHistUniform>(tab, p, smem, s);
    return;
  }
  for (const EntryTable& tab : tables) {
    if (req.hist_kind == kHistUniform) {
      launch_fused<true, kHistUniform>(tab, p, smem, s);
    } else if (req.hist_kind == kHistLog && p.band_b > 0) {
      launch_fused<true, kHistLogBand>(tab, p, smem, s);
    } else if (req.hist_kind == kHistLog) {
      launch_fused<true, kHistLog>(tab, p, smem, s);
    } else {
      launch_fused<true, kHistNone>(tab, p, 0, s);
    }
  }
}

void launch_total(const Request& req, const Layout& L, void* result, void* stream, bool with_hist) {
  (void)cudaGetLastError();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const Params p = make_params(req, L, result, nullptr);
  const bool hist = with_hist && L.record > 0;
  dim3 grid(1, 1);
  const int64_t group = std::max<int64_t>(kTotalGroup, (L.tensors + 65534) / 65535);  // grid.y
  if (hist) {
    PWS_CUDA_CHECK(
        cudaMemsetAsync(p.hist + L.tensors * L.record, 0, static_cast<size_t>(L.record) * 8, s));
    grid.x = static_cast<unsigned>((L.record + kThreads - 1) / kThreads);
    grid.y = static_cast<unsigned>(std::max<int64_t>(1, (L.tensors + group - 1) / group));
  }
  PWS_LAUNCH(grid, kThreads, 0, s, total_kernel)(p, hist ? 1 : 0, group);
  PWS_CUDA_CHECK_LAUNCH("total_kernel launch");
}

// ---------------------------------------------------------------- runtime wrappers
int current_device() {
  int d = 0;
  PWS_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int device) { PWS_CUDA_CHECK(cudaSetDevice(device)); }

void set_device_noexcept(int device) noexcept {
  if (cudaSetDevice(device) != cudaSuccess) (void)cudaGetLastError();
}

void* alloc_async(size_t bytes, void* stream) {
  void* ptr = nullptr;
  PWS_CUDA_CHECK(cudaMallocAsync(&ptr, bytes, static_cast<cudaStream_t>(stream)));
  return ptr;
}

void free_async_noexcept(void* ptr, void* stream) noexcept {
  if (ptr == nullptr) return;
  if (cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream)) != cudaSuccess) {
    (void)cudaGetLastError();
  }
}

void copy_to_host_async(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return;
  PWS_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)));
}

void copy_rows_to_host_async(void* dst, const void* src, size_t width, size_t src_pitch,
                             size_t height, void* stream) {
  if (width == 0 || height == 0) return;
  PWS_CUDA_CHECK(cudaMemcpy2DAsync(dst, width, src, src_pitch, width, height,
                                   cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)));
}

void stream_synchronize(void* stream) {
  PWS_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void stream_synchronize_noexcept(void* stream) noexcept {
  if (cudaStreamSynchronize(static_cast<cudaStream_t>(stream)) != cudaSuccess) {
    (void)cudaGetLastError();
  }
}

void device_synchronize() { PWS_CUDA_CHECK(cudaDeviceSynchronize()); }

bool stream_is_capturing(void* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  PWS_CUDA_CHECK(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status));
  return status != cudaStreamCaptureStatusNone;
}

static_assert(kCaptureModeThreadLocal == static_cast<int>(cudaStreamCaptureModeThreadLocal));

int exchange_capture_mode(int mode) {
  auto m = static_cast<cudaStreamCaptureMode>(mode);
  PWS_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&m));
  return static_cast<int>(m);
}

void restore_capture_mode_noexcept(int mode) noexcept {
  auto m = static_cast<cudaStreamCaptureMode>(mode);
  if (cudaThreadExchangeStreamCaptureMode(&m) != cudaSuccess) (void)cudaGetLastError();
}

void* event_create() {
  cudaEvent_t e = nullptr;
  PWS_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void event_record(void* event, void* stream) {
  PWS_CUDA_CHECK(
      cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

void event_synchronize(void* event) {
  PWS_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
}

void event_destroy_noexcept(void* event) noexcept {
  if (event != nullptr && cudaEventDestroy(static_cast<cudaEvent_t>(event)) != cudaSuccess) {
    (void)cudaGetLastError();
  }
}

void* stream_create_nonblocking() {
  cudaStream_t s = nullptr;
  PWS_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

void* host_alloc_pinned(size_t bytes) {
  void* ptr = nullptr;
  PWS_CUDA_CHECK(cudaHostAlloc(&ptr, bytes, cudaHostAllocDefault));
  return ptr;
}

void host_free_pinned_noexcept(void* ptr) noexcept {
  if (ptr != nullptr && cudaFreeHost(ptr) != cudaSuccess) (void)cudaGetLastError();
}

void stream_destroy_noexcept(void* stream) noexcept {
  if (stream != nullptr && cudaStreamDestroy(static_cast<cudaStream_t>(stream)) != cudaSuccess) {
    (void)cudaGetLastError();
  }
}

DeviceGuard::DeviceGuard(int device) : prev_(current_device()), changed_(prev_ != device) {
  if (changed_) set_device(device);
}

DeviceGuard::~DeviceGuard() {
  if (changed_) set_device_noexcept(prev_);
}

}  // namespace pws::cuda
