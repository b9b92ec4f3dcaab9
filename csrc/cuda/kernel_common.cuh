// Constants and launch parameters shared by the fused pass's kernel families (loads.cuh,
// histogram.cuh, moments.cuh, merge.cuh). These headers hold device code with internal linkage,
// included by the translation units that launch the fused pass (describe_cuda.cu, and
// fused_variants.cu for the small and device launch tables; see fused_launch.cuh), so every
// kernel sees and inlines all of it. The launch tables and Params have external linkage: those
// two files pass them to each other.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "describe_cuda.h"
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

}  // namespace

// ---------------------------------------------------------------- kernel parameters
// Kernel specialisations: contiguous 16-byte aligned float32 / float16 / bfloat16 inputs get a
// kernel of their own (each fits in 64 registers, 4 blocks per SM); everything else (float64,
// strided or unaligned inputs) goes through one generic kernel that dispatches on the dtype.
enum KernelKind : int32_t { kKindF32 = 0, kKindF16 = 1, kKindBF16 = 2, kKindGeneric = 3 };

// The launch table of up to N tensors. A launch copies the whole parameter, so a launch of at most
// kSmallBatch tensors takes a SmallTable (see describe_cuda.h) and the others an EntryTable; the
// kernels are templates over the table type, with the same fields and code.
template <int N>
struct EntryTableT {
  static constexpr int kCapacity = N;
  int32_t count;
  int32_t kind;                // KernelKind of every entry
  int64_t merge_group;         // chunk states per merge block (work_split())
  int64_t chunk_base;          // scratch index of this launch's first chunk
  int64_t chunk_begin[N + 1];  // prefix sums of chunks, relative to chunk_base
  int64_t group_base;          // scratch index of this launch's first merge group
  int32_t group_begin[N + 1];  // prefix sums of merge groups, relative to group_base
  int32_t unit_begin[N + 1];   // prefix sums of merge units (blocks of merge_kernel)
  int32_t index[N];            // global tensor index of each entry
  int32_t chunk[N];            // values per work item of each entry (chunk_of)
  Entry entries[N];
};
using EntryTable = EntryTableT<kMaxBatch>;
using SmallTable = EntryTableT<kSmallBatch>;

// A launch table in device memory (a CudaPlan's, with PWS_CUDA_PLAN_TABLE=device): the launch
// carries this pointer, and the kernels read the table through it (table_of).
struct TablePtr {
  const EntryTable* p;
};
template <int N>
PWS_HD const EntryTableT<N>& table_of(const EntryTableT<N>& t) {
  return t;
}
PWS_HD inline const EntryTable& table_of(const TablePtr& t) { return *t.p; }

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
static_assert(sizeof(SmallTable) + sizeof(Params) <= 1024,
              "a small launch's parameters should stay within 1 KB");

namespace {

// A value's float32 bits (a float64 value rounded to float32 first).
__device__ __forceinline__ uint32_t f32_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t f32_bits(double v) {
  return __float_as_uint(static_cast<float>(v));
}

}  // namespace
}  // namespace pws::cuda
