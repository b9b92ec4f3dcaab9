// The fused kernel and its launchers (host side), shared by the translation units that launch the
// fused pass: describe_cuda.cu (every launch whose table travels as a kernel parameter) and
// fused_variants.cu (the small tables of a few tensors and the plans' tables in device memory,
// compiled beside it: a parallel build then compiles both halves of the kernels at once). Device
// and host code with internal linkage, like the kernel families it includes.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>

#include "cuda_check.cuh"
#include "describe_cuda.h"
#include "histogram.cuh"
#include "kernel_common.cuh"
#include "loads.cuh"
#include "merge.cuh"
#include "moments.cuh"
#include "pws/dtype.h"
#include "pws/hist_layout.h"
#include "pws/moment_state.h"

namespace pws::cuda {

// The launches of fused_variants.cu (describe_cuda.cu calls them): the moments pass (and its
// merge) of a table of at most kSmallBatch tensors carried as a SmallTable, and the fused pass of
// plan table `tab` (kHistNone, kHistLog or kHistLogBand) whose kernels read its device copy.
void launch_small_moments(const SmallTable& tab, const Params& p, cudaStream_t s);
void launch_with_device_table(int hist, const EntryTable& tab, const EntryTable* dev,
                              const Params& p, size_t smem, cudaStream_t s);

namespace {

// Blocks per SM the kernel's registers must allow: 4 (64 registers) for the moments kernels of
// the aligned kinds and the float32 log-histogram kernel, whose per-group fast paths fit without
// spills (bench/sass_spills.py), else 3.
template <int kKind, int kHist>
constexpr int kMinBlocks =
    kKind == kKindGeneric || kHist == kHistUniform || (is_log(kHist) && kKind != kKindF32) ? 3 : 4;

template <int kKind, bool kState, int kHist, class Arg>
__global__ void __launch_bounds__(kThreads, kMinBlocks<kKind, kHist>)
    fused_kernel(const __grid_constant__ Arg arg, const __grid_constant__ Params p) {
  const auto& tab = table_of(arg);  // the parameter itself, or a plan's table in device memory
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

  HistCtx h = block_hist_begin<kHist>(p, gt, dyn_smem, block_window);

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

  block_hist_flush<kHist>(h, p, dyn_smem, block_window);
  if constexpr (kState) {
    if (p.inline_merge) merge_inline(tab, p, t);
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
template <int kKind, bool kState, int kHist, class Arg>
void launch_kind(const dim3& g, size_t smem, cudaStream_t s, const Arg& arg, const Params& p) {
  if (smem > 32 * 1024) {  // opt in above the default 48 KB (static shared memory included)
    // Set at every such launch (about a microsecond; the tracker's m = 3 needs 16 KB and never
    // gets here), so a device reset elsewhere in the process cannot leave it unset, and to the
    // most any launch asks for, so concurrent callers set the same value.
    PWS_CUDA_CHECK(cudaFuncSetAttribute(fused_kernel<kKind, kState, kHist, Arg>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_hist_max())));
  }
  PWS_LAUNCH(g, kThreads, smem, s, fused_kernel<kKind, kState, kHist, Arg>)(arg, p);
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
           PWS_CUDA_CHECK(cudaFuncGetAttributes(&attr, merge_kernel<EntryTable>));
           return attr.ptxVersion;
         }) >= 90;
}
#endif

// Enqueue the merge of the chunk states of a table's tensors, right after its fused launch
// (`tab` on the host, `arg` what the kernel gets: the table itself or a TablePtr to its copy).
template <class Tab, class Arg>
void launch_merge(const Tab& tab, const Arg& arg, const Params& p, cudaStream_t s) {
  const dim3 g(static_cast<unsigned>(tab.unit_begin[tab.count]));
#if defined(PWS_CUDA_EMULATION)
  PWS_LAUNCH(g, kThreads, 0, s, merge_kernel<Arg>)(arg, p);
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
  PWS_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge_kernel<Arg>, arg, p));
#endif
}

// The fused launch of a table (`tab` on the host; `arg` as for launch_merge).
template <bool kState, int kHist, class Tab, class Arg>
void launch_fused(const Tab& tab, const Arg& arg, const Params& p, size_t smem, cudaStream_t s) {
  const int64_t grid = tab.chunk_begin[tab.count];
  if (grid == 0) return;
  if (grid > INT_MAX)
    throw std::runtime_error("pyweightstat: too many CUDA work items in one launch");
  const dim3 g(static_cast<unsigned>(grid));
  switch (tab.kind) {
    case kKindF32:
      launch_kind<kKindF32, kState, kHist, Arg>(g, smem, s, arg, p);
      break;
    case kKindF16:
      launch_kind<kKindF16, kState, kHist, Arg>(g, smem, s, arg, p);
      break;
    case kKindBF16:
      launch_kind<kKindBF16, kState, kHist, Arg>(g, smem, s, arg, p);
      break;
    default:
      launch_kind<kKindGeneric, kState, kHist, Arg>(g, smem, s, arg, p);
      break;
  }
  PWS_CUDA_CHECK_LAUNCH("fused_kernel launch");
  if constexpr (kState) {
    if (!p.inline_merge) launch_merge(tab, arg, p, s);
  }
}

}  // namespace
}  // namespace pws::cuda
