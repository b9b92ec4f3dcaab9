// Multi-tensor merge family: the chunk states of every tensor of a launch merged in a fixed
// tree order (merge_kernel, or the fused kernel's last block with PWS_CUDA_MERGE=inline), the
// data-range bin edges, and the merge of all tensors' states into their total (block_merge_states,
// which describe_cuda.cu's total_kernel runs).
// Part of the fused pass; included through fused_launch.cuh only (see kernel_common.cuh).
#pragma once

#include <cstdint>

#include "histogram.cuh"
#include "kernel_common.cuh"
#include "moments.cuh"
#include "pws/moment_state.h"

namespace pws::cuda {
namespace {

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
// shuffle trees, then the 8 warp states); the result is valid in thread 0. Called by all threads
// (n is block-uniform). At most 32 states (a tensor of up to 32 chunks, a tensor's merge groups,
// a few tensors' total) are merged by warp 0 alone in ceil(log2 n) shuffle levels instead of 8:
// the levels left out would each merge only identity states into the states that reach lane 0,
// which leaves every bit of them as it is, so the result is the same as the full tree's.
__device__ MomentState block_merge_states(const MomentState* src, int64_t n,
                                          MomentState* warp_states) {
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  if (n <= 32) {
    MomentState r = moment_identity();
    if (warp == 0) {
      if (lane < n) moment_merge(r, load_state_cg(src + lane));  // as below: into the identity
      int first = 1;
      while (2 * first < n) first *= 2;
      if (n > 1) r = warp_merge(r, first);
    }
    return r;
  }
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
template <class Arg>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const __grid_constant__ Arg arg, const __grid_constant__ Params p) {
  __shared__ MomentState warp_states[kWarps];
  __shared__ int last_flag;
  wait_for_prerequisite_grid();
  const auto& tab = table_of(arg);
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
template <class Tab>
__device__ __noinline__ void merge_inline(const Tab& tab, const Params& p, int t) {
  __shared__ MomentState merge_states[kWarps];
  __shared__ int last_flag;
  const int64_t gt = tab.index[t];
  const int64_t nch = tab.chunk_begin[t + 1] - tab.chunk_begin[t];
  if (last_arrival(p.tickets + gt, nch, &last_flag)) {
    const MomentState* chunks = p.scratch + tab.chunk_base + tab.chunk_begin[t];
    finish_tensor(p, gt, block_merge_states(chunks, nch, merge_states), merge_states);
  }
}

}  // namespace
}  // namespace pws::cuda
