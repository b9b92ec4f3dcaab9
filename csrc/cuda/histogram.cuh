// Histogram family: uniform bins and universal log-linear buckets, counted into per-block
// counters in shared memory (a band of them for log histograms with m >= 6) or into the
// tensor's int64 record in global memory, with integer atomics only, so counts are
// bit-identical run to run. Filled in the same pass as the moments (moments.cuh consume()).
// Part of the fused pass; included through fused_launch.cuh only (see kernel_common.cuh).
#pragma once

#include <climits>
#include <cstdint>

#include "kernel_common.cuh"
#include "pws/hist_layout.h"

namespace pws::cuda {
namespace {

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

// A block's histogram context for tensor gt's record: the counters zeroed in shared memory
// (p.shared_hist; also the block's touched log window and the uniform edges there), else the
// global record. Called by all threads of the block (a barrier when there is a histogram).
template <int kHist>
__device__ __forceinline__ HistCtx block_hist_begin(const Params& p, int64_t gt,
                                                    unsigned char* dyn_smem,
                                                    int32_t* block_window) {
  const int tid = static_cast<int>(threadIdx.x);
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
  return h;
}

// Add a block's shared counters (those its touched window can hold) to the tensor's record, and
// max-merge its touched log window there. Called by all threads of the block, after the counting.
template <int kHist>
__device__ __forceinline__ void block_hist_flush(const HistCtx& h, const Params& p,
                                                 const unsigned char* dyn_smem,
                                                 int32_t* block_window) {
  const int tid = static_cast<int>(threadIdx.x);
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
}

}  // namespace
}  // namespace pws::cuda
