// CUDA fused pass: moments, extremes, norms, special-value counts and an optional uniform or
// universal log histogram, over many tensors per launch, on the caller's stream. This file holds
// the public launchers and the launches whose table travels as a kernel parameter; the kernel
// (fused_kernel) and its launch templates are in fused_launch.cuh, which fused_variants.cu also
// includes for the launches with a small table or a plan's device table (compiled beside this
// file). The kernel families have a header each:
//   kernel_common.cuh  launch table and parameters shared by the families
//   loads.cuh          vector, strided and packed 16-bit reads of the inputs
//   moments.cuh        per-thread power sums, extremes and counts; warp and block reductions
//   histogram.cuh      uniform and log-linear counters in shared or global memory
//   merge.cuh          merge of the chunk states per tensor, data-range edges, the total
//
// Work items are (tensor, chunk of chunk_length(numel) values); block b finds its
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
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_check.cuh"
#include "describe_cuda.h"
#include "fused_launch.cuh"
#include "pws/dtype.h"
#include "pws/hist_layout.h"
#include "pws/moment_state.h"

namespace pws::cuda {
namespace {

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

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
  if (w.blocks == 0 && w.chunk > 0) return w.chunk;
  if (w.blocks == 0) {
    int64_t c = kChunk;
    while (w.long_chunks && c < kBigChunk && numel / (2 * c) >= kMinTensorChunks) c *= 2;
    return c;
  }
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

// An environment variable naming one of two choices: `fallback` when unset or empty, false for
// `no`, true for `yes`; any other value throws std::invalid_argument.
bool flag_from_env(const char* name, const char* no, const char* yes, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  if (std::string(v) == no) return false;
  if (std::string(v) == yes) return true;
  throw std::invalid_argument(std::string("pyweightstat: ") + name + "=" + v + " is not \"" + no +
                              "\" or \"" + yes + "\"");
}

// PWS_CUDA_MERGE: false (a merge kernel) when unset or "kernel", true for "inline".
bool merge_mode_from_env() { return flag_from_env("PWS_CUDA_MERGE", "kernel", "inline", false); }

// The work split of a request: chunks longer than kChunk only without a uniform histogram
// (describe_cuda.h, kBigChunk).
WorkSplit split_for(const Request& req) {
  WorkSplit w = work_split();
  w.long_chunks = req.hist_kind != kHistUniform;
  return w;
}

std::vector<EntryTable> make_tables(const std::vector<Entry>& entries, const WorkSplit& w) {
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
      split_from_env("PWS_CUDA_CHUNK", 0, kMinChunk, kMaxChunk, true),
      split_from_env("PWS_CUDA_BLOCKS", 0, 1, int64_t(1) << 20, false),
      split_from_env("PWS_CUDA_MERGE_GROUP", kMergeGroup, 2, kMaxMergeGroup, false),
      merge_mode_from_env()};
  return split;
}

int64_t chunk_length(int64_t numel, bool uniform_histogram) {
  Request req;
  req.hist_kind = uniform_histogram ? kHistUniform : kHistNone;
  return chunk_of(numel, split_for(req));
}

Layout make_layout(const std::vector<int64_t>& numels, const Request& req) {
  Layout L;
  L.tensors = static_cast<int64_t>(numels.size());
  if (req.hist_kind == kHistUniform) L.nb = req.bins;
  if (req.hist_kind == kHistLog) L.nb = log_num_buckets(req.mantissa_bits);
  L.record = req.hist_kind == kHistNone ? 0 : kHistHeader + L.nb;
  if (req.hist_kind == kHistUniform) L.edge_arrays = req.edge_mode == kEdgesRange ? 1 : L.tensors;
  const WorkSplit w = split_for(req);
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

bool small_tables() {
  static const bool on = flag_from_env("PWS_CUDA_SMALL_TABLE", "0", "1", true);
  return on;
}

bool plan_device_tables() {
  static const bool on = flag_from_env("PWS_CUDA_PLAN_TABLE", "param", "device", false);
  return on;
}

// tables[i] of a launch, and for a table of at most kSmallBatch tensors (with small_tables()) the
// same table in a SmallTable, which its moments-only launches carry instead. A plan's tables
// with plan_device_tables() are also copied to device memory once (device_copy), and its
// launches then carry a pointer to them.
struct LaunchTables {
  std::vector<EntryTable> tables;
  std::vector<SmallTable> small;
  std::vector<bool> has_small;
  bool want_device = false;
  int device = 0;

  LaunchTables() = default;
  LaunchTables(const LaunchTables&) = delete;
  LaunchTables& operator=(const LaunchTables&) = delete;
  ~LaunchTables();
  // The tables in device memory, copied at the first call outside a graph capture on `s` (a
  // capture would hold only a captured copy); nullptr without want_device, during such a
  // capture, or for good if the copy failed (the launches then carry the tables as parameters).
  const EntryTable* device_copy(cudaStream_t s) const;

 private:
  mutable std::mutex mu_;
  mutable EntryTable* dev_ = nullptr;
  mutable bool dev_failed_ = false;
};

const EntryTable* LaunchTables::device_copy(cudaStream_t s) const {
  if (!want_device) return nullptr;
  const std::lock_guard<std::mutex> lock(mu_);
  if (dev_ != nullptr || dev_failed_ || stream_is_capturing(s)) return dev_;
  // Synchronous, once per plan, on a private stream (so it waits for nothing else); other
  // threads' graph captures are left alone, as in the fetches.
  const size_t bytes = tables.size() * sizeof(EntryTable);
  const int mode = exchange_capture_mode(kCaptureModeThreadLocal);
  void* ptr = nullptr;
  cudaStream_t side = nullptr;
  const bool ok =
      cudaMalloc(&ptr, bytes) == cudaSuccess &&
      cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess &&
      cudaMemcpyAsync(ptr, tables.data(), bytes, cudaMemcpyHostToDevice, side) == cudaSuccess &&
      cudaStreamSynchronize(side) == cudaSuccess;
  if (side != nullptr) (void)cudaStreamDestroy(side);
  restore_capture_mode_noexcept(mode);
  if (!ok) {
    (void)cudaGetLastError();
    if (ptr != nullptr) (void)cudaFree(ptr);
    dev_failed_ = true;
    return nullptr;
  }
  dev_ = static_cast<EntryTable*>(ptr);
  return dev_;
}

LaunchTables::~LaunchTables() {
  if (dev_ == nullptr) return;
  // Work launched with these tables may still be queued (results dropped unread): wait for the
  // device, then free them (other threads' graph captures are left alone).
  int prev = 0;
  const bool have_prev = cudaGetDevice(&prev) == cudaSuccess;
  set_device_noexcept(device);
  const int mode = [] {
    cudaStreamCaptureMode m = cudaStreamCaptureModeThreadLocal;
    return cudaThreadExchangeStreamCaptureMode(&m) == cudaSuccess ? static_cast<int>(m) : -1;
  }();
  (void)cudaDeviceSynchronize();
  (void)cudaFree(dev_);
  if (mode >= 0) restore_capture_mode_noexcept(mode);
  if (have_prev) set_device_noexcept(prev);
  (void)cudaGetLastError();
}

namespace {
SmallTable small_of(const EntryTable& t) {
  SmallTable s{};
  s.count = t.count;
  s.kind = t.kind;
  s.merge_group = t.merge_group;
  s.chunk_base = t.chunk_base;
  s.group_base = t.group_base;
  for (int i = 0; i <= t.count; ++i) {
    s.chunk_begin[i] = t.chunk_begin[i];
    s.group_begin[i] = t.group_begin[i];
    s.unit_begin[i] = t.unit_begin[i];
  }
  for (int i = 0; i < t.count; ++i) {
    s.index[i] = t.index[i];
    s.chunk[i] = t.chunk[i];
    s.entries[i] = t.entries[i];
  }
  return s;
}

// The tables of make_launch_tables, before make_plan_tables sets its fields.
std::shared_ptr<LaunchTables> new_launch_tables(const std::vector<Entry>& entries,
                                                const Request& req) {
  auto t = std::make_shared<LaunchTables>();
  t->tables = make_tables(entries, split_for(req));
  const bool small = small_tables();
  for (const EntryTable& tab : t->tables) {
    const bool fits = small && tab.count <= kSmallBatch;
    t->has_small.push_back(fits);
    t->small.push_back(fits ? small_of(tab) : SmallTable{});
  }
  return t;
}
}  // namespace

std::shared_ptr<const LaunchTables> make_launch_tables(const std::vector<Entry>& entries,
                                                       const Request& req) {
  return new_launch_tables(entries, req);
}

std::shared_ptr<const LaunchTables> make_plan_tables(const std::vector<Entry>& entries,
                                                     const Request& req, int device,
                                                     bool device_table) {
  auto t = new_launch_tables(entries, req);
  t->want_device = device_table;
  t->device = device;
  return t;
}

void launch_describe(const std::vector<Entry>& entries, const Request& req, const Layout& L,
                     void* result, void* scratch, void* stream, const double* host_edges) {
  launch_describe(*make_launch_tables(entries, req), req, L, result, scratch, stream, host_edges);
}

void launch_describe(const LaunchTables& launch_tables, const Request& req, const Layout& L,
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
  const std::vector<EntryTable>& tables = launch_tables.tables;
  const size_t smem = p.shared_hist ? shared_hist_bytes(req) : 0;
  const EntryTable* dev = launch_tables.device_copy(s);  // plans only: no uniform histograms
  // Table i's fused pass with states (and its merge), no or log histograms: the launch carries
  // the small table (moments of a few tensors), a pointer to the plan's device copy, or the table.
  const auto launch = [&](auto hist_tag, size_t i, size_t shared) {
    constexpr int kHist = decltype(hist_tag)::value;
    if (kHist == kHistNone && launch_tables.has_small[i]) {
      launch_small_moments(launch_tables.small[i], p, s);
    } else if (dev != nullptr) {
      launch_with_device_table(kHist, tables[i], dev + i, p, shared, s);
    } else {
      launch_fused<true, kHist>(tables[i], tables[i], p, shared, s);
    }
  };
  using None = std::integral_constant<int, kHistNone>;
  if (req.hist_kind == kHistUniform && req.edge_mode == kEdgesData) {
    for (size_t i = 0; i < tables.size(); ++i) launch(None{}, i, 0);
    for (const EntryTable& tab : tables) launch_fused<false, kHistUniform>(tab, tab, p, smem, s);
    return;
  }
  for (size_t i = 0; i < tables.size(); ++i) {
    const EntryTable& tab = tables[i];
    if (req.hist_kind == kHistUniform) {
      launch_fused<true, kHistUniform>(tab, tab, p, smem, s);
    } else if (req.hist_kind == kHistLog && p.band_b > 0) {
      launch(std::integral_constant<int, kHistLogBand>{}, i, smem);
    } else if (req.hist_kind == kHistLog) {
      launch(std::integral_constant<int, kHistLog>{}, i, smem);
    } else {
      launch(None{}, i, 0);
    }
  }
}

void launch_total(const Request& req, const Layout& L, void* result, void* stream, bool with_hist,
                  bool zero_first) {
  (void)cudaGetLastError();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const Params p = make_params(req, L, result, nullptr);
  const bool hist = with_hist && L.record > 0;
  dim3 grid(1, 1);
  const int64_t group = std::max<int64_t>(kTotalGroup, (L.tensors + 65534) / 65535);  // grid.y
  if (hist) {
    if (zero_first) {
      PWS_CUDA_CHECK(
          cudaMemsetAsync(p.hist + L.tensors * L.record, 0, static_cast<size_t>(L.record) * 8, s));
    }
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
