// CPU fused pass: moments + optional histogram over many strided tensors, OpenMP-parallel.
//
// Work is cut into fixed chunks of the flattened index space (kChunk values); each chunk is a
// sequence of groups of kSub values. A group is read twice while it sits in L1: once for the count,
// extremes and a shift (its mean), once for the shifted power sums d, d^2, d^3, d^4 (d = x - shift)
// accumulated in kLanes lanes of the compute type for kFlush values per lane and then added into
// float64. Group states merge into chunk states, and chunk states merge in chunk order, with the
// Chan/Pebay formulas, so the result does not depend on the number of threads.
#include "describe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "pws/hist_layout.h"
#include "strided.h"
#include "tuning.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(PWS_HAVE_OPENMP)
#include <omp.h>
#endif

namespace pws::cpu {
namespace {

// Where a thread's histogram increments go: a dense scratch array owned by the thread.
struct Sink {
  int64_t* counts = nullptr;
  int64_t under = 0, over = 0, nan = 0;
  int64_t lo = std::numeric_limits<int64_t>::max();  // touched index range (log layout)
  int64_t hi = -1;
};

std::vector<int64_t>& thread_scratch(size_t size) {
  thread_local std::vector<int64_t> scratch;  // kept all-zero between uses
  if (scratch.size() < size) scratch.assign(size, 0);
  return scratch;
}

template <class CT>
constexpr CT max_finite() {
  return std::numeric_limits<CT>::max();
}

// Explicit SIMD through the GCC/Clang vector extensions: one 64-byte register of the compute
// type; compilers lower it to AVX-512, 2x AVX2, 4x SSE/NEON or scalar code, whatever the target.
template <class CT>
struct Vec;
template <>
struct Vec<float> {
  using V = float __attribute__((vector_size(64)));
  using M = int32_t __attribute__((vector_size(64)));
};
template <>
struct Vec<double> {
  using V = double __attribute__((vector_size(64)));
  using M = int64_t __attribute__((vector_size(64)));
};

template <class V, class M>
PWS_FORCEINLINE V vselect(M m, V a, V b) {
  return reinterpret_cast<V>((reinterpret_cast<M>(a) & m) | (reinterpret_cast<M>(b) & ~m));
}

template <class V, class CT>
PWS_FORCEINLINE V vload(const CT* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class V, class CT>
PWS_FORCEINLINE V vsplat(CT x) {
  V v;
  for (size_t j = 0; j < sizeof(V) / sizeof(CT); ++j) v[j] = x;
  return v;
}

// Log bucket codes of finite values; returns how many leading values it coded (a multiple of the
// vector width; the caller codes the rest). Zero and subnormals give the centre code c.
template <class CT>
PWS_FORCEINLINE int64_t log_codes_finite(const CT* __restrict x, int64_t n, int mbits,
                                         int32_t* __restrict codes) {
  if constexpr (!std::is_same<CT, float>::value) {
    return 0;
  } else {
    using VI = int32_t __attribute__((vector_size(64)));
    constexpr int L = 16;
    const int32_t c = static_cast<int32_t>(log_center(mbits));
    const int shiftbits = 23 - mbits;
    const VI absmask = vsplat<VI>(int32_t(0x7fffffff)), zero = vsplat<VI>(int32_t(0));
    const VI base = vsplat<VI>(int32_t(1 << mbits) - 1), cv = vsplat<VI>(c);
    int64_t k = 0;
    for (; k + L <= n; k += L) {
      const VI b = vload<VI>(reinterpret_cast<const int32_t*>(x + k));
      const VI neg = b >> 31;                      // -1 for negative values, else 0
      VI u = ((b & absmask) >> shiftbits) - base;  // 1 + k for normals, <= 0 for subnormals
      u = vselect(u > zero, u, zero);
      const VI code = cv + ((u ^ neg) - neg);
      std::memcpy(codes + k, &code, sizeof code);
    }
    return k;
  }
}

// Uniform bin codes of values known to be finite and inside [lo, hi]; returns how many leading
// values it coded. np.histogram's estimate-and-correct rule with gathers of the edges.
template <class CT>
PWS_FORCEINLINE int64_t uniform_codes_inside(const CT* __restrict x, int64_t n,
                                             const UniformLayout& ul, int32_t* __restrict codes) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  const __m512d lo = _mm512_set1_pd(ul.lo), norm = _mm512_set1_pd(ul.norm);
  const __m512d zero = _mm512_setzero_pd(), top = _mm512_set1_pd(static_cast<double>(ul.bins - 1));
  const __m256i last = _mm256_set1_epi32(static_cast<int32_t>(ul.bins - 1));
  const __m256i one = _mm256_set1_epi32(1);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m512d xd;
    if constexpr (std::is_same<CT, float>::value) {
      xd = _mm512_cvtps_pd(_mm256_loadu_ps(x + k));
    } else {
      xd = _mm512_loadu_pd(x + k);
    }
    __m512d t = _mm512_mul_pd(_mm512_sub_pd(xd, lo), norm);
    t = _mm512_min_pd(_mm512_max_pd(t, zero), top);
    __m256i b = _mm512_cvttpd_epi32(t);
    const __m512d el = _mm512_i32gather_pd(b, ul.edges, 8);
    const __m512d eh = _mm512_i32gather_pd(b, ul.edges + 1, 8);
    const __mmask8 dec = _mm512_cmp_pd_mask(xd, el, _CMP_LT_OQ);
    const __mmask8 inc = static_cast<__mmask8>(_mm512_cmp_pd_mask(xd, eh, _CMP_GE_OQ) &
                                               _mm256_cmpneq_epi32_mask(b, last));
    b = _mm256_mask_sub_epi32(b, dec, b, one);
    b = _mm256_mask_add_epi32(b, inc, b, one);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + k), b);
  }
  return k;
#else
  (void)x, (void)n, (void)ul, (void)codes;
  return 0;
#endif
}

// Sums of one group of values in a single pass: finite count, zeros, extremes and, with kMoments,
// the power sums of d = x - shift and the norms' sums. Non-finite values are excluded (masked).
struct GroupSums {
  int64_t nf = 0, nz = 0;
  double mn = INFINITY, mx = -INFINITY;
  double s1 = 0, s2 = 0, s3 = 0, s4 = 0, sab = 0;
};

// kFinite: assume every value is finite (no per-value masks; the caller checks the sums and
// rescans a group whose sums are not finite).
template <class CT, bool kMoments, bool kFinite = false>
PWS_FORCEINLINE GroupSums scan_group(const CT* __restrict x, int64_t n, CT shift, CT scale) {
  using V = typename Vec<CT>::V;
  using M = typename Vec<CT>::M;
  constexpr int L = static_cast<int>(sizeof(V) / sizeof(CT));
  const CT vmax = std::numeric_limits<CT>::max();
  const CT inf = std::numeric_limits<CT>::infinity();
  const V vmaxv = vsplat<V>(vmax), zero = vsplat<V>(CT(0)), infv = vsplat<V>(inf);
  const V shiftv = vsplat<V>(shift), scalev = vsplat<V>(scale);
  const M absmask = reinterpret_cast<M>(vsplat<V>(-CT(0)));
  V mn = infv, mx = -infv;
  M c = {}, z = {};
  double D1[L], D2[L], D3[L], D4[L], AB[L];
  for (int j = 0; j < L; ++j) D1[j] = D2[j] = D3[j] = D4[j] = AB[j] = 0.0;
  constexpr int64_t kStep = int64_t(L) * kFlush;
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    V a1 = zero, a2 = zero, a3 = zero, a4 = zero, ab = zero;
    for (int r = 0; r < kFlush; ++r) {
      const V v = vload<V>(x + i + r * L);
      const V a = reinterpret_cast<V>(reinterpret_cast<M>(v) & ~absmask);
      z -= (v == zero);
      const M f = a <= vmaxv;  // finite (unused when kFinite)
      if constexpr (kFinite) {
        mn = vselect(v < mn, v, mn);
        mx = vselect(v > mx, v, mx);
      } else {
        c -= f;
        const V lo = vselect(f, v, infv), hi = vselect(f, v, -infv);
        mn = vselect(lo < mn, lo, mn);
        mx = vselect(hi > mx, hi, mx);
      }
      if constexpr (kMoments) {
        const V d = kFinite ? (v - shiftv) * scalev : vselect(f, (v - shiftv) * scalev, zero);
        const V d2 = d * d;
        a1 += d;
        a2 += d2;
        a3 += d2 * d;
        a4 += d2 * d2;
        ab += kFinite ? a : vselect(f, a, zero);
      }
    }
    if constexpr (kMoments) {
      for (int j = 0; j < L; ++j) {
        D1[j] += a1[j];
        D2[j] += a2[j];
        D3[j] += a3[j];
        D4[j] += a4[j];
        AB[j] += ab[j];
      }
    }
  }
  GroupSums g;
  CT gmin = inf, gmax = -inf;
  if constexpr (kFinite) g.nf = i;
  for (int j = 0; j < L; ++j) {
    g.nf += c[j];
    g.nz += z[j];
    gmin = mn[j] < gmin ? mn[j] : gmin;
    gmax = mx[j] > gmax ? mx[j] : gmax;
    g.s1 += D1[j];
    g.s2 += D2[j];
    g.s3 += D3[j];
    g.s4 += D4[j];
    g.sab += AB[j];
  }
  for (; i < n; ++i) {  // tail, in float64
    const CT v = x[i];
    g.nz += (v == CT(0));
    if (!(std::fabs(v) <= vmax)) continue;
    ++g.nf;
    gmin = v < gmin ? v : gmin;
    gmax = v > gmax ? v : gmax;
    if constexpr (kMoments) {
      const double d = static_cast<double>((v - shift) * scale);
      const double vd = static_cast<double>(v);
      g.s1 += d;
      g.s2 += d * d;
      g.s3 += d * d * d;
      g.s4 += d * d * d * d;
      g.sab += std::fabs(vd);
    }
  }
  g.mn = static_cast<double>(gmin);
  g.mx = static_cast<double>(gmax);
  return g;
}

// The group's sums: first without per-value masks, which holds when every value is finite (the
// common case: about a third fewer vector instructions per value); a NaN or an infinity makes the
// d^4 or |x| sums non-finite, and then the group is scanned again with the masks (so is a group
// whose finite values overflow them, which the caller handles as before).
template <class CT, bool kMoments>
PWS_FORCEINLINE GroupSums scan_group_checked(const CT* __restrict x, int64_t n, CT shift,
                                             CT scale) {
  if constexpr (kMoments) {
    const GroupSums g = scan_group<CT, true, true>(x, n, shift, scale);
    if (std::isfinite(g.s4 + g.sab)) return g;
  }
  return scan_group<CT, kMoments>(x, n, shift, scale);
}

// Power of two 2^-e with 2^(e-1) <= amp < 2^e (1 for amp = 0 or not finite): scaling by it is
// exact and brings the largest |d| near 1, far from float over- and underflow in d^4.
template <class CT>
CT pow2_scale(double amp) {
  if (!(amp > 0.0) || !std::isfinite(amp)) return CT(1);
  int e = 0;
  std::frexp(amp, &e);
  return static_cast<CT>(std::ldexp(1.0, -e));
}

// Above this magnitude a group is summed in float64 (exact_group_sums): float32 partial sums of
// |x| or of (x - shift) could overflow.
template <class CT>
constexpr double kHugeMagnitude = std::is_same<CT, float>::value ? 0x1p120 : 0x1p1000;

// Two-pass float64 sums of one group, centred on its mean and scaled by a power of two; sets
// shift/scale to the ones used so that the caller's redo test passes.
template <class CT>
void exact_group_sums(const CT* x, int64_t n, GroupSums& gs, CT& shift, CT& scale) {
  double mean = 0.0, cnt = 0.0;
  const double vmax = static_cast<double>(std::numeric_limits<CT>::max());
  for (int64_t k = 0; k < n; ++k) {
    const double v = static_cast<double>(x[k]);
    if (std::fabs(v) <= vmax) {
      mean += (v - mean) / (cnt + 1.0);
      cnt += 1.0;
    }
  }
  const double amp = std::max(gs.mx - mean, mean - gs.mn);
  const double sc = static_cast<double>(pow2_scale<CT>(amp));
  gs.s1 = gs.s2 = gs.s3 = gs.s4 = gs.sab = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    const double v = static_cast<double>(x[k]);
    if (!(std::fabs(v) <= vmax)) continue;
    const double d = (v - mean) * sc;
    gs.s1 += d;
    gs.s2 += d * d;
    gs.s3 += d * d * d;
    gs.s4 += d * d * d * d;
    gs.sab += std::fabs(v);
  }
  // The caller rescales by 1/scale and re-centres on `shift`; mean is exact enough as a CT shift
  // only approximately, so fold the rounding of the shift into s1.
  shift = static_cast<CT>(mean);
  scale = static_cast<CT>(sc);
  const double dshift = (mean - static_cast<double>(shift)) * sc;
  const double cn = cnt;
  // re-express sums of d about `shift` instead of `mean`: d' = d + dshift
  const double s1 = gs.s1, s2 = gs.s2, s3 = gs.s3, s4 = gs.s4, e = dshift;
  gs.s1 = s1 + cn * e;
  gs.s2 = s2 + 2 * e * s1 + cn * e * e;
  gs.s3 = s3 + 3 * e * s2 + 3 * e * e * s1 + cn * e * e * e;
  gs.s4 = s4 + 4 * e * s3 + 6 * e * e * s2 + 4 * e * e * e * s1 + cn * e * e * e * e;
}

// One group: a single pass with the carried shift and scale (from the previous group). If the
// shift was more than one standard deviation from this group's mean (cancellation could cost
// accuracy) or the scale is far from the group's spread (d^4 could over- or underflow), a second
// pass over the L1-resident group re-centres on the group's mean and re-scales.
template <class CT, bool kMoments, HistKind kHist>
PWS_FORCEINLINE void process_group(const CT* __restrict x, int64_t n, MomentState& st, Sink& sink,
                                   const UniformLayout& ul, int mbits, CT& shift, CT& scale) {
  const CT vmax = std::numeric_limits<CT>::max();
  GroupSums gs = scan_group_checked<CT, kMoments>(x, n, shift, scale);
  const int64_t nf = gs.nf;
  MomentState g = moment_identity();
  g.zero = gs.nz;
  if (nf < n) {  // rare: classify the non-finite values
    for (int64_t k = 0; k < n; ++k) {
      const CT v = x[k];
      if (v != v) {
        ++g.nan;
      } else if (std::fabs(v) > vmax) {
        if (v > 0)
          ++g.posinf;
        else
          ++g.neginf;
      }
    }
  }
  if (nf > 0) {
    g.n = nf;
    g.min = gs.mn;
    g.max = gs.mx;
    if constexpr (kMoments) {
      const double dn = static_cast<double>(nf);
      if (std::max(std::fabs(gs.mn), std::fabs(gs.mx)) > kHugeMagnitude<CT>) {
        // Values near the top of the format: sums of the compute type could overflow.
        exact_group_sums(x, n, gs, shift, scale);
      }
      const double sh = static_cast<double>(shift);
      const double amp = std::max(gs.mx - sh, sh - gs.mn) * static_cast<double>(scale);
      const double d = gs.s1 / dn;
      const bool cancels = !(gs.s1 * d <= gs.s2 - gs.s1 * d);  // n d^2 > M2, or not finite
      const bool badscale = amp > 0x1p16 || (amp > 0.0 && amp < 0x1p-16);
      if (cancels || badscale) {
        shift = static_cast<CT>(sh + d / static_cast<double>(scale));
        const double sh2 = static_cast<double>(shift);
        scale = pow2_scale<CT>(std::max(gs.mx - sh2, sh2 - gs.mn));
        gs = scan_group_checked<CT, true>(x, n, shift, scale);
      }
      const double is = 1.0 / static_cast<double>(scale);  // exact: a power of two
      const double is2 = is * is;
      moments_from_shifted_sums(dn, static_cast<double>(shift), gs.s1 * is, gs.s2 * is2,
                                gs.s3 * is2 * is, gs.s4 * is2 * is2, &g.mean, &g.m2, &g.m3, &g.m4);
      g.sum_abs = gs.sab;
      g.sum_sq = g.m2 + dn * g.mean * g.mean;  // sum of x^2, free of float overflow
      shift = static_cast<CT>(g.mean);
      scale = pow2_scale<CT>(std::max(gs.mx - g.mean, g.mean - gs.mn));
    }
  }
  const CT gmin = static_cast<CT>(gs.mn), gmax = static_cast<CT>(gs.mx);
  moment_merge(st, g);
  // ---- pass 3: histogram. Bin codes are computed branch-free into a buffer (vectorised, with
  // gathers for the edge checks), then counted; special values get codes past the bins.
  if constexpr (kHist != HistKind::None) {
    thread_local std::vector<int32_t> codes_buf(kSub);
    int32_t* __restrict codes = codes_buf.data();
    if constexpr (kHist == HistKind::Uniform) {
      const int32_t nb = static_cast<int32_t>(ul.bins);
      const double lo = ul.lo, hi = ul.hi, norm = ul.norm, top = static_cast<double>(nb - 1);
      const double* __restrict e = ul.edges;
      int64_t k0 = 0;
      if (nf == n && static_cast<double>(gmin) >= lo && static_cast<double>(gmax) <= hi) {
        k0 = uniform_codes_inside(x, n, ul, codes);  // every value finite and in range
      }
      for (int64_t k = k0; k < n; ++k) {  // general case, branch-free
        const double xd = static_cast<double>(x[k]);
        double t = (xd - lo) * norm;
        t = t > 0.0 ? t : 0.0;  // also maps NaN to 0
        t = t < top ? t : top;
        const int32_t b = static_cast<int32_t>(t);
        const double el = e[b], eh = e[b + 1];
        // np.histogram's correction: one bin down if below its lower edge, else one bin up if at
        // or above its upper edge (never past the last, closed bin). The two are exclusive.
        const int32_t bc = b - static_cast<int32_t>(xd < el) +
                           (static_cast<int32_t>(xd >= eh) & static_cast<int32_t>(b != nb - 1));
        const int32_t inside = static_cast<int32_t>(xd >= lo) & static_cast<int32_t>(xd <= hi);
        const int32_t special =
            nb + 2 - 2 * static_cast<int32_t>(xd < lo) - static_cast<int32_t>(xd > hi);
        codes[k] = special + inside * (bc - special);
      }
      const int64_t stride = static_cast<int64_t>(nb) + 3;
      int64_t* __restrict cnt = sink.counts;
      int64_t k = 0;
      for (; k + kUniformCopies <= n; k += kUniformCopies) {
        for (int r = 0; r < kUniformCopies; ++r) ++cnt[r * stride + codes[k + r]];
      }
      for (; k < n; ++k) ++cnt[codes[k]];
    } else {
      const int32_t c = static_cast<int32_t>(log_center(mbits));
      int32_t lo = std::numeric_limits<int32_t>::max(), hi = -1;
      const int32_t big = std::numeric_limits<int32_t>::max();
      int64_t k0 = 0;
      if (nf == n) {  // every value finite: a short vector formula, window from the extremes
        k0 = log_codes_finite(x, n, mbits, codes);
        if (k0 > 0) {
          lo = std::min<int32_t>(lo,
                                 static_cast<int32_t>(log_bucket(static_cast<float>(gmin), mbits)));
          hi = std::max<int32_t>(hi,
                                 static_cast<int32_t>(log_bucket(static_cast<float>(gmax), mbits)));
        }
      }
      // General case, branch-free: -inf, +inf and NaN get the codes past the 2c + 1 buckets.
      const LogCoder lc = make_log_coder(mbits, 0, 2 * c + 1, 2 * c + 2, 2 * c + 3);
      for (int64_t k = k0; k < n; ++k) {
        const int32_t code = log_code(bits_from_float(static_cast<float>(x[k])), lc);
        codes[k] = code;
        const bool fin = code <= 2 * c;
        const int32_t cl = fin ? code : big, ch = fin ? code : -1;
        lo = cl < lo ? cl : lo;
        hi = ch > hi ? ch : hi;
      }
      int64_t* __restrict cnt = sink.counts;
      for (int64_t k = 0; k < n; ++k) ++cnt[codes[k]];
      if (hi >= 0) {
        sink.lo = std::min<int64_t>(sink.lo, lo);
        sink.hi = std::max<int64_t>(sink.hi, hi);
      }
    }
  }
}

template <class T, bool kMoments, HistKind kHist>
MomentState process_chunk(const FlatView& f, int64_t start, int64_t count, Sink& sink,
                          const UniformLayout& ul, int mbits) {
  using CT = typename Load<T>::CT;
  thread_local std::vector<CT> buf;
  MomentState st = moment_identity();
  CT shift = CT(0), scale = CT(1);  // carried from group to group (the first usually re-centres)
  const bool direct = std::is_same<T, CT>::value && f.contiguous();
  if (!direct && buf.size() < static_cast<size_t>(kSub)) buf.resize(kSub);
  for (int64_t g = start; g < start + count; g += kSub) {
    const int64_t len = std::min<int64_t>(kSub, start + count - g);
    const CT* x;
    if (direct) {
      x = reinterpret_cast<const CT*>(f.base) + g;
    } else if (f.contiguous()) {  // 16-bit formats: a unit-stride conversion loop that vectorises
      const T* __restrict src = reinterpret_cast<const T*>(f.base) + g;
      CT* __restrict dst = buf.data();
      for (int64_t i = 0; i < len; ++i) dst[i] = Load<T>::get(src + i);
      x = buf.data();
    } else {
      gather<T, CT>(f, g, len, buf.data(), [](const T* p) { return Load<T>::get(p); });
      x = buf.data();
    }
    process_group<CT, kMoments, kHist>(x, len, st, sink, ul, mbits, shift, scale);
  }
  return st;
}

struct Job {
  const std::vector<TensorView>* views;
  std::vector<FlatView> flat;
  bool moments;
  const HistRequest* hist;
  std::vector<DescribeOutput>* out;
};

// Thread scratch: uniform = kUniformCopies interleaved copies of (bins + 3) counters; log = one
// copy of the 2C + 1 buckets + 3. The 3 extra counters are underflow, overflow and NaN.
size_t scratch_size(const HistRequest& h) {
  if (h.kind == HistKind::Uniform) return static_cast<size_t>(kUniformCopies * (h.bins + 3));
  if (h.kind == HistKind::Log) return static_cast<size_t>(log_num_buckets(h.mantissa_bits) + 3);
  return 0;
}

UniformLayout uniform_layout(const HistRequest& h, size_t t) {
  UniformLayout u{0, 0.0, 0.0, 0.0, nullptr};
  if (h.kind != HistKind::Uniform) return u;
  u.bins = h.bins;
  u.edges = h.edges[t];
  u.lo = u.edges[0];
  u.hi = u.edges[h.bins];
  u.norm = static_cast<double>(h.bins) / (u.hi - u.lo);
  return u;
}

// Move a sink's counts into the output histogram (or a dense log array) and zero the scratch.
void drain_sink(Sink& s, const HistRequest& h, std::vector<int64_t>& dense, HistOutput& o,
                bool into_dense) {
  if (h.kind == HistKind::Uniform) {
    const int64_t nb = h.bins, stride = nb + 3;
    for (int r = 0; r < kUniformCopies; ++r) {
      int64_t* src = s.counts + r * stride;
      for (int64_t b = 0; b < nb; ++b) o.counts[static_cast<size_t>(b)] += src[b];
      o.underflow += src[nb];
      o.overflow += src[nb + 1];
      o.nan += src[nb + 2];
    }
    std::memset(s.counts, 0, sizeof(int64_t) * static_cast<size_t>(kUniformCopies * stride));
  } else if (h.kind == HistKind::Log) {
    const int64_t top = log_num_buckets(h.mantissa_bits);  // first special code
    o.underflow += s.counts[top];
    o.overflow += s.counts[top + 1];
    o.nan += s.counts[top + 2];
    s.counts[top] = s.counts[top + 1] = s.counts[top + 2] = 0;
    if (s.hi >= s.lo) {
      const size_t w = static_cast<size_t>(s.hi - s.lo + 1);
      if (into_dense) {
        for (int64_t b = s.lo; b <= s.hi; ++b) dense[static_cast<size_t>(b)] += s.counts[b];
      } else {
        o.first = s.lo;
        o.counts.assign(s.counts + s.lo, s.counts + s.hi + 1);
      }
      std::memset(s.counts + s.lo, 0, sizeof(int64_t) * w);
    }
  }
}

template <class T, bool kMoments, HistKind kHist>
void run_serial(Job& job, size_t t) {
  const FlatView& f = job.flat[t];
  const HistRequest& h = *job.hist;
  DescribeOutput& o = (*job.out)[t];
  const UniformLayout ul = uniform_layout(h, t);
  Sink sink;
  if (kHist != HistKind::None) sink.counts = thread_scratch(scratch_size(h)).data();
  MomentState st = moment_identity();
  for (int64_t c = 0; c < f.numel; c += kChunk) {
    const MomentState cs = process_chunk<T, kMoments, kHist>(
        f, c, std::min<int64_t>(kChunk, f.numel - c), sink, ul, h.mantissa_bits);
    moment_merge(st, cs);
  }
  o.state = st;
  if (kHist != HistKind::None) {
    std::vector<int64_t> none;
    drain_sink(sink, h, none, o.hist, false);
  }
}

template <class T, bool kMoments, HistKind kHist>
void run_parallel(Job& job, size_t t) {
  const FlatView& f = job.flat[t];
  const HistRequest& h = *job.hist;
  DescribeOutput& o = (*job.out)[t];
  const UniformLayout ul = uniform_layout(h, t);
  const int64_t nchunks = (f.numel + kChunk - 1) / kChunk;
  std::vector<MomentState> cs(static_cast<size_t>(nchunks));
  std::vector<int64_t> dense;
  if (kHist == HistKind::Log)
    dense.assign(static_cast<size_t>(log_num_buckets(h.mantissa_bits)), 0);
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = -1;
#pragma omp parallel
  {
    Sink sink;
    if (kHist != HistKind::None) sink.counts = thread_scratch(scratch_size(h)).data();
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t start = c * kChunk;
      cs[static_cast<size_t>(c)] = process_chunk<T, kMoments, kHist>(
          f, start, std::min<int64_t>(kChunk, f.numel - start), sink, ul, h.mantissa_bits);
    }
    if (kHist != HistKind::None) {
#pragma omp critical(pws_hist_drain)
      {
        lo = std::min(lo, sink.lo);
        hi = std::max(hi, sink.hi);
        drain_sink(sink, h, dense, o.hist, true);
      }
    }
  }
  MomentState st = moment_identity();
  for (const MomentState& s : cs) moment_merge(st, s);
  o.state = st;
  if (kHist == HistKind::Log && hi >= lo) {
    o.hist.first = lo;
    o.hist.counts.assign(dense.begin() + lo, dense.begin() + hi + 1);
  }
}

template <bool kMoments, HistKind kHist>
void run_one(Job& job, size_t t, bool parallel) {
  PWS_DISPATCH_DTYPE((*job.views)[t].dtype, {
    if (parallel) {
      run_parallel<scalar_t, kMoments, kHist>(job, t);
    } else {
      run_serial<scalar_t, kMoments, kHist>(job, t);
    }
  });
}

void run_tensor(Job& job, size_t t, bool parallel) {
  const HistKind k = job.hist->kind;
  if (job.moments) {
    if (k == HistKind::None) run_one<true, HistKind::None>(job, t, parallel);
    if (k == HistKind::Uniform) run_one<true, HistKind::Uniform>(job, t, parallel);
    if (k == HistKind::Log) run_one<true, HistKind::Log>(job, t, parallel);
  } else {
    if (k == HistKind::None) run_one<false, HistKind::None>(job, t, parallel);
    if (k == HistKind::Uniform) run_one<false, HistKind::Uniform>(job, t, parallel);
    if (k == HistKind::Log) run_one<false, HistKind::Log>(job, t, parallel);
  }
}

}  // namespace

std::vector<DescribeOutput> describe(const std::vector<TensorView>& views, bool moments,
                                     const HistRequest& hist) {
  std::vector<DescribeOutput> out(views.size());
  Job job{&views, {}, moments, &hist, &out};
  job.flat.reserve(views.size());
  std::vector<size_t> small, large;
  for (size_t t = 0; t < views.size(); ++t) {
    job.flat.push_back(flatten(views[t]));
    out[t].state = moment_identity();
    if (hist.kind == HistKind::Uniform) out[t].hist.counts.assign(hist.bins, 0);
    if (views[t].numel == 0) continue;
    (views[t].numel >= kParallelMinValues ? large : small).push_back(t);
  }
  // Small tensors: one thread each. Large tensors: all threads on one tensor at a time. A call
  // with little work in total runs on the calling thread alone: waking the OpenMP team costs
  // more than the work, and its spinning threads compete with the caller's (e.g. torch's).
  int64_t total = 0;
  for (const TensorView& v : views) total += v.numel;
  const bool serial = total < kParallelMinTotal;
  const int64_t nsmall = static_cast<int64_t>(small.size());
#pragma omp parallel for schedule(dynamic, 1) if (nsmall > 1 && !serial)
  for (int64_t k = 0; k < nsmall; ++k) run_tensor(job, small[static_cast<size_t>(k)], false);
  for (size_t t : large) run_tensor(job, t, !serial);
  return out;
}

#if defined(PWS_HAVE_OPENMP)
int max_threads() { return omp_get_max_threads(); }
void set_threads(int n) { omp_set_num_threads(n); }
#else
int max_threads() { return 1; }
void set_threads(int) {}
#endif

const char* simd_name() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE2__)
  return "sse2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

}  // namespace pws::cpu
