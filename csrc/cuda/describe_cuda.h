// CUDA fused pass (moments + optional uniform/log histogram) over many tensors: launchers and the
// device-buffer layout. Plain C++: includes no CUDA header, so the bindings compile without nvcc.
//
// One call of the engine enqueues, on the caller's stream and without any host synchronisation:
//   1. a memset of the histogram records,
//   2. (uniform histograms) the bin edges, computed on the device (np.linspace's exact values),
//   3. per batch of up to kMaxBatch tensors, one launch of the fused kernel over (tensor, chunk)
//      work items, writing one moment state per chunk and adding into the histogram records,
//   4. after each fused launch, one launch of the merge kernel (programmatic dependent launch on
//      sm_90 and newer, so it adds no launch gap): each tensor's chunk states merged in a fixed
//      order, in groups of kMergeGroup chunk states for the tensors that have more (one block per
//      group), then the groups' results by the last group block to finish (arrival tickets,
//      zeroed by the fused kernel; with PWS_CUDA_MERGE=inline, see work_split, by a memset
//      before it, and the fused kernel's last block merges instead).
// Results stay in a device buffer laid out as described by `Layout` until they are fetched.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "pws/moment_state.h"
#include "pws/tensor_view.h"

namespace pws::cuda {

// Values per work item (one thread block): 256 threads x 256 values, doubled up to kBigChunk for
// a tensor that still has at least kMinTensorChunks work items of the longer length (chunk_length
// below): a tensor of 10^8 values gets 382 blocks of 2^18 values instead of 1,526 of 2^16. Fewer,
// longer blocks pay each block's fixed cost (its start, its warp and block merges, its state's
// store) less often; on an H200 (2026-11-27, bench/bench_chunks.py, one call) the moments pass
// took 8-9 % less time at 5 x 10^7 and 10^8 values in both dtypes except float32 at 10^8 (6 %),
// and the m = 7 log histogram 14-19 % less at 10^8. Requests with a uniform histogram keep kChunk:
// there the histogram-only kernel measured 28 % slower at 10^8 values with the longer chunks
// (0.484 -> 0.619 ms, float32, two calls on H200s). The rule reads the tensor's length and the
// histogram kind alone, so results do not depend on the GPU; every length is a multiple of every
// vector width, so chunk starts keep 16-byte alignment. (work_split() below can override it for a
// sweep, within [kMinChunk, kMaxChunk].)
constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int64_t kBigChunk = int64_t(1) << 18;
constexpr int64_t kMinTensorChunks = 320;
constexpr int64_t kMinChunk = int64_t(1) << 12;
constexpr int64_t kMaxChunk = int64_t(1) << 23;
constexpr int kThreads = 256;
// Chunk states merged by one block of the merge kernel: a tensor with more chunks first has its
// chunk states merged in groups of this many (a block each), then the groups' results (by the
// last of those blocks to finish); a tensor with fewer is one block's work. Fixed
// (like kChunk), so the merge order does not depend on the GPU. The host-emulated tests shrink it
// so that both shapes run on small tensors.
#ifndef PWS_MERGE_GROUP
#define PWS_MERGE_GROUP 256
#endif
constexpr int64_t kMergeGroup = PWS_MERGE_GROUP;
constexpr int64_t kMaxMergeGroup = int64_t(1) << 16;

// The work split of this process: kChunk and kMergeGroup, unless environment variables say
// otherwise: PWS_CUDA_CHUNK (a power of two in [kMinChunk, kMaxChunk]) for the chunk length,
// PWS_CUDA_BLOCKS (1 to 2^20) for about that many chunks per tensor instead (its length divided by
// that, rounded up to a multiple of 512, within [kMinChunk, kMaxChunk]: e.g. one chunk per
// resident block, a single wave), PWS_CUDA_MERGE_GROUP (2 to kMaxMergeGroup), and PWS_CUDA_MERGE
// ("kernel", the default: a merge kernel after the fused one; "inline": the last block of the
// fused kernel to finish a tensor's chunks merges their states, in one level). Read once, at
// the first CUDA call; an invalid value makes every CUDA call throw std::invalid_argument. For
// bench/bench_chunks.py, which measures how the split shapes a pass's fixed cost: another split
// changes the summation order, so results differ from the default split's in their last bits
// (never in counts or histograms).
struct WorkSplit {
  int64_t chunk;   // 0: the default rule (chunk_length)
  int64_t blocks;  // 0: every tensor in chunks of `chunk` values
  int64_t merge_group;
  bool inline_merge;
  bool long_chunks = true;  // the default rule may lengthen chunks (not for uniform histograms)
};
WorkSplit work_split();
// Values per work item of a tensor of `numel` values under this process's work split: by default
// the longest of kChunk, 2 kChunk, ..., kBigChunk that leaves the tensor at least kMinTensorChunks
// work items (kChunk when none does, and always kChunk for a request with a uniform histogram).
int64_t chunk_length(int64_t numel, bool uniform_histogram);
// Dimensions of a strided input after merging contiguous ones (more: the caller copies it).
constexpr int kMaxCudaDims = 6;
// Tensors per launch: the table travels as a __grid_constant__ kernel parameter (< 32 KB).
constexpr int kMaxBatch = 200;
// A launch of the moments pass (no histogram) over at most this many tensors carries a table
// sized for them (under 1 KB of parameters with Params) instead of the 29 KB one: every launch
// copies its whole parameter, and a pass of one tensor has two launches (the fused and the merge
// kernel). Same fields and code, so the same results bit for bit. Unless the environment sets
// PWS_CUDA_SMALL_TABLE=0 (read once, like work_split(); "1" is the default; another value makes
// every CUDA call throw std::invalid_argument), for bench/bench_chunks.py to time both forms.
constexpr int kSmallBatch = 4;
bool small_tables();
// Histogram record per tensor (int64): [underflow, overflow, nan, window_lo_rev, window_hi_p1,
// counts...]. window_lo_rev = nb - lowest touched finite bucket, window_hi_p1 = highest + 1 (both
// 0 when no finite value was counted; log layout only).
constexpr int kHistHeader = 5;

enum HistKind : int { kHistNone = 0, kHistUniform = 1, kHistLog = 2 };
// Where the uniform edges come from: `kEdgesRange` one np.linspace(lo, hi) for every tensor,
// `kEdgesData` each tensor's finite min/max (a moments pass first), `kEdgesExplicit` host arrays.
enum EdgeMode : int { kEdgesNone = 0, kEdgesRange = 1, kEdgesData = 2, kEdgesExplicit = 3 };

// One input after its dimensions were ordered and merged (pws::cpu::flatten).
struct Entry {
  const void* data;  // lowest address of the tensor
  int64_t numel;
  int32_t dtype;    // pws::DType
  int16_t ndim;     // merged dims; 0 means contiguous
  int16_t aligned;  // contiguous and 16-byte aligned: vector loads
  int64_t shape[kMaxCudaDims];
  int64_t strides[kMaxCudaDims];  // elements, >= 0
};

struct Request {
  int hist_kind = kHistNone;
  int64_t bins = 0;       // uniform
  int mantissa_bits = 0;  // log
  int edge_mode = kEdgesNone;
  double lo = 0.0, hi = 1.0;  // kEdgesRange
};

// Byte offsets of the parts of the device buffers. The result buffer holds the states and the
// histogram records (and edges); the scratch buffer holds one state per chunk and is only read
// by the launches (the bindings allocate it right after the result, in the same buffer).
struct Layout {
  int64_t tensors = 0;      // P
  int64_t nb = 0;           // counts per histogram record (bins, or log buckets)
  int64_t record = 0;       // int64 values per histogram record (kHistHeader + nb), 0 if none
  int64_t edge_arrays = 0;  // arrays of bins + 1 edges
  int64_t chunks = 0;       // total work items
  int64_t groups = 0;       // partial merges of tensors with more than kMergeGroup chunks
  size_t off_states = 0;    // (P + 1) MomentState; slot P is the total
  size_t off_hist = 0;      // (P + 1) records
  size_t off_edges = 0;     // edge_arrays x (bins + 1) float64
  size_t result_bytes = 0;
  size_t off_tickets = 0;    // in scratch: (tensors + 1) uint32 arrival tickets
  size_t scratch_bytes = 0;  // (chunks + groups) MomentState, then the tickets
};

Layout make_layout(const std::vector<int64_t>& numels, const Request& req);

// The launch tables of a list of inputs (which tensors each launch of the fused kernel covers,
// their work items and merge groups): a function of the entries and the request only. A plan
// that launches the same inputs again and again builds them once.
struct LaunchTables;
std::shared_ptr<const LaunchTables> make_launch_tables(const std::vector<Entry>& entries,
                                                       const Request& req);

// Enqueue the fused pass. `host_edges` (kEdgesExplicit only) holds P x (bins + 1) float64 and
// may be freed on return. Throws std::runtime_error naming the failing CUDA call.
void launch_describe(const std::vector<Entry>& entries, const Request& req, const Layout& layout,
                     void* result, void* scratch, void* stream, const double* host_edges);
// The same with tables from make_launch_tables(entries, req).
void launch_describe(const LaunchTables& tables, const Request& req, const Layout& layout,
                     void* result, void* scratch, void* stream, const double* host_edges);
// A CudaPlan's tables: make_launch_tables', and with `device_table` also copied to `device`'s
// memory at the plan's first launch outside a graph capture, after which its launches carry a
// pointer to them instead of the 29 KB table (the device memory is freed with the last holder,
// after waiting for the device).
std::shared_ptr<const LaunchTables> make_plan_tables(const std::vector<Entry>& entries,
                                                     const Request& req, int device,
                                                     bool device_table);
// The plans' default for device_table, from PWS_CUDA_PLAN_TABLE: "param" (unset: false, a plan's
// launches carry their tables like every other launch) or "device" (true); read once, another
// value makes every CUDA call throw std::invalid_argument. Until one form has measured better
// on a GPU, bench/bench_stats.py times both.
bool plan_device_tables();

// Enqueue the merge of all P tensor states (and, with `with_hist`, histogram records) into slot P.
// The histogram total is added into slot P's record: `zero_first` clears it first, which a
// result's first total may skip (launch_describe zeroed all P + 1 records), a second must not.
void launch_total(const Request& req, const Layout& layout, void* result, void* stream,
                  bool with_hist, bool zero_first);

// ---------------------------------------------------------------- thin runtime wrappers
// Each throws std::runtime_error with the CUDA error string; the *_noexcept ones never throw.
int current_device();
void set_device(int device);
void set_device_noexcept(int device) noexcept;
void* alloc_async(size_t bytes, void* stream);
void free_async_noexcept(void* ptr, void* stream) noexcept;
void copy_to_host_async(void* dst, const void* src, size_t bytes, void* stream);
// height rows of `width` bytes, source rows `src_pitch` bytes apart, packed in dst.
void copy_rows_to_host_async(void* dst, const void* src, size_t width, size_t src_pitch,
                             size_t height, void* stream);
void stream_synchronize(void* stream);
void stream_synchronize_noexcept(void* stream) noexcept;
void device_synchronize();
// Whether work enqueued on `stream` now is being captured into a CUDA graph (not executed).
bool stream_is_capturing(void* stream);
// The calling thread's stream-capture interaction mode (cudaStreamCaptureMode values): set
// `mode`, return the previous one. ThreadLocal lets a thread make synchronising calls while
// another thread captures a CUDA graph in the default (global) mode; its own captures stay
// checked.
int exchange_capture_mode(int mode);
void restore_capture_mode_noexcept(int mode) noexcept;
constexpr int kCaptureModeThreadLocal = 1;
// Events (timing disabled) and a private non-blocking stream, for fetching results without
// waiting for work queued after them.
void* event_create();
void event_record(void* event, void* stream);
void event_synchronize(void* event);
void event_destroy_noexcept(void* event) noexcept;
void* stream_create_nonblocking();
// Page-locked host memory (fast, truly asynchronous device-to-host copies).
void* host_alloc_pinned(size_t bytes);
void host_free_pinned_noexcept(void* ptr) noexcept;
void stream_destroy_noexcept(void* stream) noexcept;

// Restores the previous current device on destruction.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_;
  bool changed_;
};

}  // namespace pws::cuda
