// Fused moments family: per-thread shifted power sums, extremes and special-value counts over
// a chunk (optionally counting each value into a histogram, histogram.cuh, in the same pass),
// reduced across the warp and converted to one MomentState per block with the Pebay formulas
// of pws/moment_state.h (shared with the CPU engine).
// Part of the fused pass; included through fused_launch.cuh only (see kernel_common.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include "histogram.cuh"
#include "kernel_common.cuh"
#include "loads.cuh"
#include "pws/moment_state.h"

namespace pws::cuda {
namespace {

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

}  // namespace
}  // namespace pws::cuda
