// Bindings of the CUDA fused pass. Host C++ only: the kernels are reached through the launchers
// declared in csrc/cuda/describe_cuda.h, so this file compiles without nvcc or CUDA headers.
//
// describe_cuda() enqueues the work on the caller's stream and returns a CudaResult that owns the
// device result buffer; nothing is copied to the host until fetch(), which waits for that work
// only (an event) and copies on a private stream through pinned memory: the states and log
// headers, then the log histogram windows (WindowRows: one 2-D copy, or one per window).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../cuda/describe_cuda.h"
#include "../cuda/distances_cuda.h"
#include "cuda_entry.h"
#include "dlpack_view.h"
#include "pws/hist_layout.h"
#include "pws/moment_state.h"
#include "register.h"
#include "state_rows.h"
#include "window_rows.h"

namespace py = pybind11;

namespace pws::bind {
namespace {

namespace cu = pws::cuda;

void* to_ptr(uintptr_t v) { return reinterpret_cast<void*>(v); }

// Device memory from a Python allocator (e.g. a torch.uint8 tensor from the caching allocator,
// which follows CUDA graph capture and stream-ordered reuse) or from cudaMallocAsync.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  void allocate(size_t bytes, const py::object& allocator, int device, void* stream) {
    if (!allocator.is_none()) {
      keep_ = allocator(py::int_(bytes));
      ptr_ = to_ptr(keep_.attr("data_ptr")().cast<uintptr_t>());
      if (ptr_ == nullptr)
        throw std::runtime_error("pyweightstat: allocator returned a null buffer");
    } else {
      device_ = device;
      stream_ = stream;
      ptr_ = cu::alloc_async(bytes, stream);
      owned_ = true;
    }
  }

  void* get() const { return ptr_; }

  // Stream-ordered free (no synchronisation). Never throws.
  void release() noexcept {
    if (owned_ && ptr_ != nullptr) {
      try {
        cu::DeviceGuard guard(device_);
        cu::free_async_noexcept(ptr_, stream_);
      } catch (...) {  // e.g. the CUDA runtime is already unloaded at interpreter exit
      }
    }
    owned_ = false;
    ptr_ = nullptr;
    if (keep_) {
      py::gil_scoped_acquire gil;
      keep_ = py::object();
    }
  }

 private:
  void* ptr_ = nullptr;
  bool owned_ = false;
  int device_ = 0;
  void* stream_ = nullptr;
  py::object keep_;
};

// Touched window of a log-histogram record from its header (see kHistHeader): the first bucket
// and the number of buckets, {0, 0} when no finite value was counted.
struct LogWindow {
  int64_t first = 0;
  int64_t len = 0;
};

LogWindow log_window(const int64_t* header, int64_t nb) {
  if (header[4] <= 0) return {};
  const int64_t first = nb - header[3];
  return {first, header[4] - first};
}

// WindowRows' copies as device-to-host copies on one stream.
struct DeviceCopies {
  void* stream;
  void rows(void* dst, const void* src, size_t width, size_t pitch, size_t height) const {
    cu::copy_rows_to_host_async(dst, src, width, pitch, height, stream);
  }
  void one(void* dst, const void* src, size_t bytes) const {
    cu::copy_to_host_async(dst, src, bytes, stream);
  }
};

// Synchronises a copy stream when a fetch leaves its locked region by an exception, so no copy
// into the shared staging buffer is still in flight for the next user (possibly on another
// device's stream) or for a reallocation of that buffer.
class SyncOnUnwind {
 public:
  explicit SyncOnUnwind(void* stream) : stream_(stream), exceptions_(std::uncaught_exceptions()) {}
  ~SyncOnUnwind() {
    if (std::uncaught_exceptions() > exceptions_) cu::stream_synchronize_noexcept(stream_);
  }
  SyncOnUnwind(const SyncOnUnwind&) = delete;
  SyncOnUnwind& operator=(const SyncOnUnwind&) = delete;

 private:
  void* stream_;
  int exceptions_;
};

// Grow-only page-locked staging buffer of the fetches and their copy stream per device (one per
// process; the mutex serialises their users). Pinned memory makes the strided (2-D) copies single
// DMA transfers.
class PinnedStaging {
 public:
  ~PinnedStaging() {
    cu::host_free_pinned_noexcept(ptr_);
    for (const auto& [device, stream] : streams_) {
      (void)device;
      cu::stream_destroy_noexcept(stream);
    }
  }
  std::mutex& mutex() { return mutex_; }
  // The private non-blocking copy stream of the current device `device` (created once). Call
  // with the mutex held.
  void* stream(int device) {
    for (const auto& [d, s] : streams_) {
      if (d == device) return s;
    }
    streams_.emplace_back(device, cu::stream_create_nonblocking());
    return streams_.back().second;
  }
  // Make the buffer at least `bytes` bytes. Pinned allocation and free may wait for the device,
  // so both happen outside the mutex (a user holds the buffer only under the mutex and has
  // finished its copies before releasing it, so the old buffer is free once swapped out). Call
  // without the mutex held.
  void grow(size_t bytes) {
    size_t want = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes <= size_) return;
      want = std::max(bytes, size_ + size_ / 2);  // geometric: few reallocations
    }
    void* fresh = cu::host_alloc_pinned(want);
    void* old = fresh;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (want > size_) {
        old = ptr_;
        ptr_ = fresh;
        size_ = want;
      }
    }
    cu::host_free_pinned_noexcept(old);
  }
  // At least `bytes` bytes (contents not kept). Call with the mutex held, after grow(bytes).
  char* reserve(size_t bytes) {
    if (bytes > size_) {  // not grown first: reallocate here (waits under the mutex)
      const size_t want = std::max(bytes, size_ + size_ / 2);  // geometric: few reallocations
      cu::host_free_pinned_noexcept(ptr_);
      ptr_ = nullptr;
      size_ = 0;
      ptr_ = cu::host_alloc_pinned(want);
      size_ = want;
    }
    return static_cast<char*>(ptr_);
  }

 private:
  std::mutex mutex_;
  void* ptr_ = nullptr;
  size_t size_ = 0;
  std::vector<std::pair<int, void*>> streams_;
};

PinnedStaging& pinned_staging() {
  static PinnedStaging staging;
  return staging;
}

// Exclusive use of the pinned staging buffer (at least `bytes`, grown before the mutex is taken;
// 0: no staging needed) and of `device`'s copy stream, for one locked region of a fetch. The
// copy stream is drained if the region is left by an exception (SyncOnUnwind), before the mutex
// is released. Construct with the GIL released and the device current.
class StagingLease {
 public:
  StagingLease(PinnedStaging& pin, int device, size_t bytes)
      : lock_(grown(pin, bytes).mutex()),
        side_(pin.stream(device)),
        unwind_(side_),
        stage_(bytes > 0 ? pin.reserve(bytes) : nullptr) {}
  void* side() const { return side_; }
  char* stage() const { return stage_; }

 private:
  static PinnedStaging& grown(PinnedStaging& pin, size_t bytes) {
    if (bytes > 0) pin.grow(bytes);
    return pin;
  }
  std::lock_guard<std::mutex> lock_;
  void* side_;
  SyncOnUnwind unwind_;
  char* stage_;
};

// Events of dropped results, handed to later results of the same device: a tracker makes a
// result per record, and creating and destroying its event were two more driver calls per record
// (the creation on the training thread). The next result records the event again, which replaces
// whatever it marked before (its old owner is gone, so nothing waits on that). Events recorded
// during a graph capture are destroyed instead of kept. At most kPooledEvents per device, kept
// until the process exits (the pool is never destroyed: the CUDA runtime may be gone by then).
class EventPool {
 public:
  static constexpr size_t kPooledEvents = 64;

  // A pooled event of `device`, or nullptr.
  void* take(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<void*>& events = events_of(device);
    if (events.empty()) return nullptr;
    void* e = events.back();
    events.pop_back();
    return e;
  }

  // Keep `event` (of `device`) for a later result, or destroy it. Never throws.
  void give(int device, void* event) noexcept {
    if (event == nullptr) return;
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      std::vector<void*>& events = events_of(device);
      if (events.size() < kPooledEvents) {
        events.push_back(event);
        return;
      }
    } catch (...) {  // out of memory for the list: destroy it below
    }
    cu::event_destroy_noexcept(event);
  }

 private:
  // The free list of `device` (added empty on its first use). Call with the mutex held.
  std::vector<void*>& events_of(int device) {
    for (auto& [d, events] : free_) {
      if (d == device) return events;
    }
    return free_.emplace_back(device, std::vector<void*>()).second;
  }

  std::mutex mutex_;
  std::vector<std::pair<int, std::vector<void*>>> free_;
};

EventPool& event_pool() {
  static EventPool* pool = new EventPool;  // never destroyed (see above)
  return *pool;
}

class CudaResult {
 public:
  CudaResult(int device, void* stream, cu::Request req, cu::Layout layout)
      : device_(device), stream_(stream), req_(req), layout_(layout) {}
  CudaResult(const CudaResult&) = delete;
  CudaResult& operator=(const CudaResult&) = delete;
  ~CudaResult() {
    if (event_ == nullptr) return;
    if (captured_) {
      cu::event_destroy_noexcept(event_);
    } else {
      event_pool().give(device_, event_);
    }
  }

  DeviceBuffer& buffer() { return buf_; }

  // Record (again) the event that marks the end of the work enqueued so far. Device set.
  void mark_enqueued() {
    if (event_ == nullptr) event_ = event_pool().take(device_);
    if (event_ == nullptr) event_ = cu::event_create();
    // An event recorded while the stream is captured into a CUDA graph may not be waited on
    // (and says nothing about a replay): such results wait for the device instead.
    captured_ = captured_ || cu::stream_is_capturing(stream_);
    cu::event_record(event_, stream_);
  }

  // Wait for the enqueued work of this result only (not for later work on its stream).
  void wait_enqueued() {
    if (captured_) {
      // Filled by replays of a CUDA graph, which run on whatever stream replays them: wait for
      // the whole device (a read sees the replays queued before it). Never during the capture.
      if (cu::stream_is_capturing(stream_)) {
        throw std::runtime_error(
            "pyweightstat: results of work captured into a CUDA graph can be read only after "
            "the capture ends (and a replay)");
      }
      cu::device_synchronize();
    } else if (event_ != nullptr) {
      cu::event_synchronize(event_);
    } else {
      cu::stream_synchronize(stream_);
    }
  }

  // Keep `inputs` (e.g. a plan's imported tensors or its tables) alive as long as this result.
  void keep_alive(std::shared_ptr<const void> inputs) { keep_alive_.push_back(std::move(inputs)); }

  int device() const { return device_; }
  const cu::Request& request() const { return req_; }
  const cu::Layout& layout() const { return layout_; }
  bool total_ready() const { return total_ready_; }
  bool total_hist() const { return total_hist_; }
  const char* data() const { return base(); }

  // (f (P, 8), n (P, 5), hists or None, edges (P, bins + 1) or None); hists[i] is
  // (first, counts, underflow, overflow, nan) as for describe_cpu.
  py::tuple fetch() {
    py::tuple rows = fetch_rows(0, layout_.tensors, req_.hist_kind != cu::kHistNone);
    py::object edges = py::none();
    if (req_.hist_kind == cu::kHistUniform && req_.edge_mode == cu::kEdgesData) {
      py::array_t<double> e(
          {static_cast<py::ssize_t>(layout_.tensors), static_cast<py::ssize_t>(req_.bins + 1)});
      double* ep = e.mutable_data();
      const size_t bytes = static_cast<size_t>(e.size()) * sizeof(double);
      {
        py::gil_scoped_release release;
        PinnedStaging& pin = pinned_staging();
        cu::DeviceGuard guard(device_);
        wait_enqueued();  // before the lock: other fetches never wait for this result's work
        const StagingLease lease(pin, device_, 0);  // copies straight into the array
        cu::copy_to_host_async(ep, base() + layout_.off_edges, bytes, lease.side());
        cu::stream_synchronize(lease.side());
      }
      edges = e;
    }
    return py::make_tuple(rows[0], rows[1], rows[2], edges);
  }

  void launch_total(bool with_hist) {
    {
      py::gil_scoped_release release;
      cu::DeviceGuard guard(device_);
      // the pass's zeroing counts only where this call is captured as the pass was (a total
      // captured into a graph after an uncaptured pass must zero at every replay)
      enqueue_total(with_hist, cu::stream_is_capturing(stream_) == captured_);
      mark_enqueued();
    }
    total_done(with_hist);
  }

  // The total's work, after the pass's on the same stream (device set; mark_enqueued() after).
  // The first total adds into the record launch_describe zeroed with the others, where
  // `with_pass` (enqueued alike: both captured into one graph or neither); otherwise it clears
  // the record first.
  void enqueue_total(bool with_hist, bool with_pass) {
    cu::launch_total(req_, layout_, buf_.get(), stream_, with_hist, totals_ > 0 || !with_pass);
    ++totals_;
  }
  // With the GIL held, after enqueue_total.
  void total_done(bool with_hist) {
    total_hist_ = with_hist && req_.hist_kind != cu::kHistNone;
    total_ready_ = true;
  }

  // (f (8,), n (5,), hist tuple or None) of the total (launch_total first).
  py::tuple fetch_total() {
    if (!total_ready_)
      throw std::runtime_error("pyweightstat: fetch_total() before launch_total()");
    py::tuple rows = fetch_rows(layout_.tensors, 1, total_hist_);
    py::object h = py::none();
    if (total_hist_) h = rows[2].cast<py::list>()[0];
    return py::make_tuple(rows[0].cast<py::array_t<double>>()[py::int_(0)],
                          rows[1].cast<py::array_t<int64_t>>()[py::int_(0)], h);
  }

  int64_t tensors() const { return layout_.tensors; }
  size_t nbytes() const { return layout_.result_bytes; }

 private:
  char* base() const { return static_cast<char*>(buf_.get()); }

  // States and histograms of slots [t0, t0 + count). Waits for this result's own work only (its
  // event; later work on the stream keeps running; the whole device for work captured into a CUDA
  // graph), then copies on the private copy stream: the states and log headers in one round, the
  // log windows of all slots (WindowRows) in a second, both through the pinned staging buffer.
  py::tuple fetch_rows(int64_t t0, int64_t count, bool with_hist) {
    const size_t n = static_cast<size_t>(count);
    const size_t rec = static_cast<size_t>(layout_.record);
    const size_t hdr = static_cast<size_t>(cu::kHistHeader);
    std::vector<MomentState> st(n);
    std::vector<int64_t> heads;  // log: the record headers
    py::array_t<int64_t> uni;    // uniform: whole records
    const bool uniform = with_hist && req_.hist_kind == cu::kHistUniform;
    const bool log = with_hist && req_.hist_kind == cu::kHistLog;
    if (uniform)
      uni = py::array_t<int64_t>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(rec)});
    if (log) heads.resize(n * hdr);
    int64_t* uni_ptr = uniform ? uni.mutable_data() : nullptr;
    const char* hist = base() + layout_.off_hist + static_cast<size_t>(t0) * rec * 8;
    const size_t st_bytes = n * sizeof(MomentState), head_bytes = heads.size() * 8;
    PinnedStaging& pin = pinned_staging();
    {
      py::gil_scoped_release release;
      cu::DeviceGuard guard(device_);
      wait_enqueued();  // before the lock: other fetches never wait for this result's work
      // never a null stage
      const StagingLease lease(pin, device_, std::max<size_t>(st_bytes + head_bytes, 1));
      void* side = lease.side();
      char* stage = lease.stage();
      cu::copy_to_host_async(
          stage, base() + layout_.off_states + static_cast<size_t>(t0) * sizeof(MomentState),
          st_bytes, side);
      if (log) cu::copy_rows_to_host_async(stage + st_bytes, hist, hdr * 8, rec * 8, n, side);
      if (uniform) cu::copy_to_host_async(uni_ptr, hist, n * rec * 8, side);
      cu::stream_synchronize(side);
      std::memcpy(st.data(), stage, st_bytes);
      if (log) std::memcpy(heads.data(), stage + st_bytes, head_bytes);
    }
    py::tuple fn = state_rows(st);
    py::object hists = py::none();
    if (uniform) {
      py::list out;
      for (size_t i = 0; i < n; ++i) {
        const int64_t* r = uni_ptr + i * rec;
        py::array_t<int64_t> counts(static_cast<py::ssize_t>(req_.bins));
        if (req_.bins > 0) {
          std::memcpy(counts.mutable_data(), r + cu::kHistHeader,
                      static_cast<size_t>(req_.bins) * sizeof(int64_t));
        }
        out.append(py::make_tuple(int64_t(0), counts, r[0], r[1], r[2]));
      }
      hists = out;
    } else if (log) {
      std::vector<py::array_t<int64_t>> windows(n);
      std::vector<int64_t> first(n, 0);
      std::vector<int64_t*> dst(n, nullptr);
      std::vector<int64_t> len(n, 0);
      for (size_t i = 0; i < n; ++i) {
        const LogWindow w = log_window(heads.data() + i * hdr, layout_.nb);
        first[i] = w.first;
        len[i] = w.len;
        windows[i] = py::array_t<int64_t>(static_cast<py::ssize_t>(len[i]));
        dst[i] = windows[i].mutable_data();
      }
      const WindowRows rows(first.data(), len.data(), n);
      if (rows.values() > 0) {
        py::gil_scoped_release release;
        cu::DeviceGuard guard(device_);
        const StagingLease lease(pin, device_, rows.values() * 8);
        int64_t* stage = reinterpret_cast<int64_t*>(lease.stage());
        rows.enqueue(stage, hist, rec, hdr, DeviceCopies{lease.side()});
        cu::stream_synchronize(lease.side());
        for (size_t i = 0; i < n; ++i) {
          if (len[i] > 0) {
            std::memcpy(dst[i], rows.row(stage, i), static_cast<size_t>(len[i]) * 8);
          }
        }
      }
      py::list out;
      for (size_t i = 0; i < n; ++i) {
        const int64_t* h = heads.data() + i * hdr;
        out.append(py::make_tuple(first[i], windows[i], h[0], h[1], h[2]));
      }
      hists = out;
    }
    return py::make_tuple(fn[0], fn[1], hists);
  }

  int device_;
  bool captured_ = false;  // work enqueued during a graph capture: wait for the device
  void* stream_;
  cu::Request req_;
  cu::Layout layout_;
  DeviceBuffer buf_;
  bool total_ready_ = false;
  bool total_hist_ = false;
  int totals_ = 0;  // totals enqueued so far
  void* event_ = nullptr;
  std::vector<std::shared_ptr<const void>> keep_alive_;
};

// Imported inputs of one call: the DLPack owners keep the producers' memory alive.
struct Inputs {
  std::vector<ImportedTensor> imported;
  std::vector<cu::Entry> entries;
  std::vector<int64_t> numels;
};

Inputs import_inputs(const py::list& caps, const std::vector<std::string>& names, int device) {
  Inputs in;
  in.imported = import_capsules(caps, names);
  in.entries.reserve(in.imported.size());
  for (size_t i = 0; i < in.imported.size(); ++i) {
    const TensorView& v = in.imported[i].view;
    const std::string what = i < names.size() ? names[i] : "input " + std::to_string(i);
    if (v.device != DeviceKind::CUDA) {
      throw py::value_error(what +
                            " is not a CUDA array (this is a bug in pyweightstat's "
                            "dispatch)");
    }
    if (v.device_id != device) {
      throw py::value_error(what + " is on cuda:" + std::to_string(v.device_id) +
                            " but the other inputs are on cuda:" + std::to_string(device) +
                            "; pass inputs from one device per call");
    }
    in.entries.push_back(make_entry(v, what));
    in.numels.push_back(v.numel);
  }
  return in;
}

cu::Request make_request(int hist_kind, int64_t bins, int mantissa_bits, int edge_mode, double lo,
                         double hi) {
  cu::Request req;
  req.hist_kind = hist_kind;
  req.bins = bins;
  req.mantissa_bits = mantissa_bits;
  req.edge_mode = hist_kind == cu::kHistUniform ? edge_mode : cu::kEdgesNone;
  req.lo = lo;
  req.hi = hi;
  if (hist_kind < cu::kHistNone || hist_kind > cu::kHistLog) throw py::value_error("bad hist_kind");
  if (hist_kind == cu::kHistUniform &&
      (bins < 1 || edge_mode < cu::kEdgesRange || edge_mode > cu::kEdgesExplicit)) {
    throw py::value_error("uniform histograms need bins >= 1 and an edge mode");
  }
  if (hist_kind == cu::kHistLog && (mantissa_bits < 0 || mantissa_bits > kMaxMantissaBits)) {
    throw py::value_error("mantissa_bits must be in [0, 10]");
  }
  return req;
}

// Where a result's buffer keeps its scratch: after the result proper (states, histograms), which
// is what a fetch copies. One allocation holds both (one call of the allocator per launch) where
// the scratch (a chunk state per 2^16 to 2^18 values, a merge state per group of chunks and a
// ticket per tensor: about 150 KB for a ViT-B/16) is at most an eighth of the result, as with
// log histograms: the scratch then lives as long as the result. Otherwise (moments only, or a
// model large enough) the scratch is a buffer of its own, released once the launches are
// enqueued, so that results waiting to be read do not hold scratch larger than themselves.
bool scratch_in_result(const cu::Layout& layout) {
  return layout.scratch_bytes * 8 <= layout.result_bytes;
}

// Where the calling thread's time goes in one launch (enqueue): host-clock stamps at the
// boundaries of its phases, kept per thread (cuda_last_launch_ns reads the calling thread's
// last launch). A diagnostic for bench_stats, which reads it after each tracker record inside a
// training loop: a stamp costs a clock read (tens of ns), so it is always on.
constexpr std::array<const char*, 8> kLaunchPhases = {
    "result",       // the result object and the device guard
    "allocate",     // the allocator (a Python call: torch's caching allocator) and the scratch
    "release_gil",  // releasing the GIL
    "pass",         // the pass's memset and kernel launches (driver calls)
    "total",        // the total's launch
    "event",        // the capture check and the event record
    "acquire_gil",  // taking the GIL back (waits while another thread holds it)
    "finish",       // the rest, up to the return of the result
};
struct LaunchStamps {
  std::array<int64_t, kLaunchPhases.size() + 1> t{};
  bool any = false;
  void stamp(size_t i) {
    t[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
               .count();
  }
};
thread_local LaunchStamps last_launch;

// The phases of the calling thread's last launch in ns (kLaunchPhases order), or None.
py::object last_launch_ns() {
  if (!last_launch.any) return py::none();
  py::tuple out(kLaunchPhases.size());
  for (size_t i = 0; i < kLaunchPhases.size(); ++i) {
    out[i] = py::int_(last_launch.t[i + 1] - last_launch.t[i]);
  }
  return std::move(out);
}

// Allocate the result's buffer and enqueue the fused pass on `stream`, and with `total` the
// merged total too (CudaPlan::launch: one release of the GIL and one event for all of it).
std::unique_ptr<CudaResult> enqueue(const cu::LaunchTables& tables, const cu::Request& req,
                                    const cu::Layout& layout, int device, void* s,
                                    const py::object& allocator, const double* host_edges,
                                    bool total = false, bool total_hist = false) {
  LaunchStamps& clock = last_launch;
  clock.any = false;
  clock.stamp(0);
  auto res = std::make_unique<CudaResult>(device, s, req, layout);
  DeviceBuffer scratch;
  cu::DeviceGuard guard(device);
  const bool inside = scratch_in_result(layout);
  const size_t scratch_at = (layout.result_bytes + 255) / 256 * 256;
  clock.stamp(1);
  res->buffer().allocate(inside ? scratch_at + layout.scratch_bytes : layout.result_bytes,
                         allocator, device, s);
  char* base = static_cast<char*>(res->buffer().get());
  if (!inside) scratch.allocate(layout.scratch_bytes, allocator, device, s);
  void* scratch_ptr = inside ? static_cast<void*>(base + scratch_at) : scratch.get();
  clock.stamp(2);
  {
    py::gil_scoped_release release;
    clock.stamp(3);
    cu::launch_describe(tables, req, layout, base, scratch_ptr, s, host_edges);
    clock.stamp(4);
    if (total) res->enqueue_total(total_hist, true);
    clock.stamp(5);
    res->mark_enqueued();
    clock.stamp(6);
  }
  clock.stamp(7);
  if (total) res->total_done(total_hist);
  // a scratch of its own is released here: stream-ordered (cudaFreeAsync, or the caching
  // allocator's reuse on the same stream), after the launches that use it
  scratch.release();
  clock.stamp(8);
  clock.any = true;
  return res;
}

std::unique_ptr<CudaResult> describe_cuda(const py::list& caps,
                                          const std::vector<std::string>& names, int device,
                                          uintptr_t stream, int hist_kind, int64_t bins,
                                          int mantissa_bits, int edge_mode, double lo, double hi,
                                          const py::object& edges, const py::object& allocator) {
  const Inputs in = import_inputs(caps, names, device);
  const cu::Request req = make_request(hist_kind, bins, mantissa_bits, edge_mode, lo, hi);
  py::array_t<double, py::array::c_style | py::array::forcecast> host_edges;
  if (req.edge_mode == cu::kEdgesExplicit) {
    host_edges = py::array_t<double, py::array::c_style | py::array::forcecast>(edges);
    if (host_edges.size() != static_cast<py::ssize_t>(in.entries.size()) * (bins + 1)) {
      throw py::value_error("edges: P x (bins + 1) values expected");
    }
  }
  const cu::Layout layout = cu::make_layout(in.numels, req);
  const double* he = req.edge_mode == cu::kEdgesExplicit ? host_edges.data() : nullptr;
  return enqueue(*cu::make_launch_tables(in.entries, req), req, layout, device, to_ptr(stream),
                 allocator, he);
}

// A fixed list of CUDA tensors described again and again (e.g. a model's parameters at every
// training step): inputs are imported and checked once; launch() only enqueues work. The plan
// keeps the tensors' memory alive and reads whatever they hold when the work runs.
class CudaPlan {
 public:
  CudaPlan(const py::list& caps, const std::vector<std::string>& names, int device, int hist_kind,
           int mantissa_bits, const py::object& device_table)
      : device_(device),
        in_(std::make_shared<Inputs>(import_inputs(caps, names, device))),
        req_(make_request(hist_kind, 0, mantissa_bits, cu::kEdgesNone, 0.0, 1.0)),
        layout_(cu::make_layout(in_->numels, req_)),
        device_table_(device_table.is_none() ? cu::plan_device_tables()
                                             : device_table.cast<bool>()),
        tables_(cu::make_plan_tables(in_->entries, req_, device, device_table_)) {
    if (hist_kind == cu::kHistUniform) {
      throw py::value_error("CudaPlan supports no histogram or log histograms");
    }
  }

  std::unique_ptr<CudaResult> launch(uintptr_t stream, const py::object& allocator, bool total) {
    auto res = enqueue(*tables_, req_, layout_, device_, to_ptr(stream), allocator, nullptr, total,
                       req_.hist_kind == cu::kHistLog);
    // The inputs outlive every result's work even if the plan is dropped first (the caching
    // allocator could otherwise hand their memory to a stream other than the kernels' one).
    res->keep_alive(in_);
    res->keep_alive(tables_);  // a device copy of the tables, read by the kernels
    return res;
  }

  int64_t tensors() const { return layout_.tensors; }
  size_t result_bytes() const { return layout_.result_bytes; }
  bool device_table() const { return device_table_; }

 private:
  int device_;
  std::shared_ptr<Inputs> in_;  // destroyed with the GIL held (DLPack deleters)
  cu::Request req_;
  cu::Layout layout_;
  bool device_table_;                               // the tables are read from device memory
  std::shared_ptr<const cu::LaunchTables> tables_;  // built once: launch() only enqueues
};

// While it lives, the calling thread may synchronise although another thread captures a CUDA
// graph in the default (global) mode, as the tracker's conversion thread does during a user's
// capture; a capture of the calling thread itself is still protected.
class OtherThreadsCapturesIgnored {
 public:
  OtherThreadsCapturesIgnored() : old_(cu::exchange_capture_mode(cu::kCaptureModeThreadLocal)) {}
  ~OtherThreadsCapturesIgnored() { cu::restore_capture_mode_noexcept(old_); }
  OtherThreadsCapturesIgnored(const OtherThreadsCapturesIgnored&) = delete;
  OtherThreadsCapturesIgnored& operator=(const OtherThreadsCapturesIgnored&) = delete;

 private:
  int old_;
};

// States and log-histogram windows of many results (all with the same tensor count and request,
// totals launched), fetched together: one wait per result on its own event (later work on the
// stream keeps running), then two rounds of copies into pinned memory on a private stream (an
// exception leaves nothing behind: SyncOnUnwind synchronises the copy stream).
// Returns (f (R, P + 1, 8), n (R, P + 1, 5), nnz (R, P + 1), buckets, counts, flows (R, P + 1, 3)):
// the non-empty log buckets (global bucket index, count) of every histogram in (result, slot,
// bucket) order, nnz[i, t] of them for slot t of result i; slot P is the total.
py::tuple fetch_many(const py::list& handles) {
  std::vector<CudaResult*> rs;
  std::vector<py::object> held;  // alive while the GIL is released, whatever happens to the list
  for (const py::handle& h : handles) {
    if (!py::isinstance<CudaResult>(h))
      throw py::type_error("fetch_many expects CudaResult objects");
    held.push_back(py::reinterpret_borrow<py::object>(h));
    rs.push_back(h.cast<CudaResult*>());
  }
  const size_t r = rs.size();
  if (r == 0) throw py::value_error("fetch_many needs at least one result");
  const cu::Request req = rs[0]->request();
  const cu::Layout L = rs[0]->layout();
  for (CudaResult* c : rs) {
    if (c->layout().tensors != L.tensors || c->layout().record != L.record ||
        c->request().hist_kind != req.hist_kind || c->device() != rs[0]->device() ||
        !c->total_ready()) {
      throw py::value_error("fetch_many: results must share tensors, request, device and total");
    }
  }
  if (req.hist_kind == cu::kHistUniform) throw py::value_error("fetch_many: no uniform histograms");
  const bool log = req.hist_kind == cu::kHistLog;
  const size_t p1 = static_cast<size_t>(L.tensors + 1);
  const size_t rec = static_cast<size_t>(L.record);
  const size_t hdr = static_cast<size_t>(cu::kHistHeader);
  const size_t st_bytes = r * p1 * sizeof(MomentState);
  const size_t head_bytes = log ? r * p1 * hdr * 8 : 0;
  std::vector<MomentState> st(r * p1);
  std::vector<int64_t> heads(log ? r * p1 * hdr : 0);
  std::vector<int64_t> first(r * p1, 0), len(r * p1, 0);
  std::vector<WindowRows> wins;       // per result: how its windows are copied
  std::vector<size_t> row_off(r, 0);  // int64 offset of result i's windows in the staging
  size_t window_values = 0;
  int64_t packed = 0;
  // Fixed-shape outputs first: the locked region below never takes the GIL back.
  const py::ssize_t R = static_cast<py::ssize_t>(r), P1 = static_cast<py::ssize_t>(p1);
  py::array_t<double> f({R, P1, py::ssize_t(8)});
  py::array_t<int64_t> n({R, P1, py::ssize_t(5)});
  py::array_t<int64_t> nnz({R, P1}), flows({R, P1, py::ssize_t(3)});
  double* fp = f.mutable_data();
  int64_t* np_ = n.mutable_data();
  int64_t* fl = flows.mutable_data();
  int64_t* nz = nnz.mutable_data();
  std::vector<int64_t> buckets, counts;
  PinnedStaging& pin = pinned_staging();
  {
    py::gil_scoped_release release;
    cu::DeviceGuard guard(rs[0]->device());
    const OtherThreadsCapturesIgnored capture_mode;
    for (CudaResult* c : rs) c->wait_enqueued();  // before the lock (see CudaResult::fetch_rows)
    const int device = rs[0]->device();
    {  // round 1: states and log headers
      const StagingLease lease(pin, device, std::max<size_t>(st_bytes + head_bytes, 1));
      void* side = lease.side();
      char* stage = lease.stage();
      for (size_t i = 0; i < r; ++i) {
        const char* b = rs[i]->data();
        cu::copy_to_host_async(stage + i * p1 * sizeof(MomentState), b + L.off_states,
                               p1 * sizeof(MomentState), side);
        if (log) {
          cu::copy_rows_to_host_async(stage + st_bytes + i * p1 * hdr * 8, b + L.off_hist, hdr * 8,
                                      rec * 8, p1, side);
        }
      }
      cu::stream_synchronize(side);
      std::memcpy(st.data(), stage, st_bytes);
      if (log) std::memcpy(heads.data(), stage + st_bytes, head_bytes);
    }
    wins.reserve(log ? r : 0);
    for (size_t i = 0; log && i < r; ++i) {
      for (size_t t = 0; t < p1; ++t) {
        const LogWindow w = log_window(heads.data() + (i * p1 + t) * hdr, L.nb);
        first[i * p1 + t] = w.first;
        len[i * p1 + t] = w.len;
        packed += w.len;
      }
      wins.emplace_back(first.data() + i * p1, len.data() + i * p1, p1);
      row_off[i] = window_values;
      window_values += wins[i].values();
    }
    // round 2: the log windows, read from the staging while the lock is held
    const StagingLease lease(pin, device, window_values * 8);
    const int64_t* windows = nullptr;
    if (window_values > 0) {
      int64_t* st64 = reinterpret_cast<int64_t*>(lease.stage());
      for (size_t i = 0; i < r; ++i) {
        wins[i].enqueue(st64 + row_off[i], rs[i]->data() + L.off_hist, rec, hdr,
                        DeviceCopies{lease.side()});
      }
      cu::stream_synchronize(lease.side());
      windows = st64;
    }
    buckets.reserve(static_cast<size_t>(packed));
    counts.reserve(static_cast<size_t>(packed));
    for (size_t i = 0; i < r; ++i) {
      for (size_t t = 0; t < p1; ++t) {
        const size_t k = i * p1 + t;
        state_to_row(st[k], fp + k * 8, np_ + k * 5);
        for (size_t j = 0; j < 3; ++j) fl[k * 3 + j] = log ? heads[k * hdr + j] : 0;
        const size_t before = counts.size();
        if (len[k] > 0) {
          const int64_t* row = wins[i].row(windows + row_off[i], t);
          for (int64_t j = 0; j < len[k]; ++j) {
            if (row[j] != 0) {
              buckets.push_back(first[k] + j);
              counts.push_back(row[j]);
            }
          }
        }
        nz[k] = static_cast<int64_t>(counts.size() - before);
      }
    }
  }
  py::array_t<int64_t> b_a(static_cast<py::ssize_t>(buckets.size()));
  py::array_t<int64_t> c_a(static_cast<py::ssize_t>(counts.size()));
  if (!buckets.empty()) {
    // Megabytes for a batch of large-model records: copied without the GIL, which the training
    // thread would otherwise wait for (the tracker fetches on a background thread).
    int64_t* bp = b_a.mutable_data();
    int64_t* cp = c_a.mutable_data();
    py::gil_scoped_release release;
    std::memcpy(bp, buckets.data(), buckets.size() * 8);
    std::memcpy(cp, counts.data(), counts.size() * 8);
    std::vector<int64_t>().swap(buckets);  // freed here too, not under the GIL
    std::vector<int64_t>().swap(counts);
  }
  return py::make_tuple(f, n, nnz, b_a, c_a, flows);
}

using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::array_t<double> pairwise_distances_cuda(const I64& counts, const F64& centres, int metric,
                                            int device) {
  if (counts.ndim() != 2) throw py::value_error("counts must be a (K, B) array");
  const int64_t k = counts.shape(0), b = counts.shape(1);
  if (centres.size() != b) throw py::value_error("centres must have B values");
  if (metric < 0 || metric > 4) throw py::value_error("metric code must be in 0..4");
  py::array_t<double> out({k, k});
  double* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    cu::pairwise_distances(counts.data(), k, b, centres.data(), metric, device, dst);
  }
  return out;
}

}  // namespace

void register_cuda(py::module_& m) {
  py::class_<CudaResult>(m, "CudaResult",
                         "Device-resident results of one describe_cuda call (private).")
      .def("fetch", &CudaResult::fetch,
           "Copy every tensor's state and histogram to the host (waits for this call's work only).")
      .def("launch_total", &CudaResult::launch_total, py::arg("with_hist"),
           "Enqueue the merge of all tensors into the total slot (no synchronisation).")
      .def("fetch_total", &CudaResult::fetch_total, "Copy the total to the host.")
      .def_property_readonly("tensors", &CudaResult::tensors)
      .def_property_readonly("nbytes", &CudaResult::nbytes);
  py::class_<CudaPlan>(m, "CudaPlan",
                       "Inputs imported once, described again at every launch() (private).")
      .def(py::init<const py::list&, const std::vector<std::string>&, int, int, int,
                    const py::object&>(),
           py::arg("capsules"), py::arg("names"), py::arg("device"), py::arg("hist_kind"),
           py::arg("mantissa_bits"), py::arg("device_table") = py::none())
      .def_property_readonly("device_table", &CudaPlan::device_table,
                             "Whether the launches read the tables from device memory.")
      .def("launch", &CudaPlan::launch, py::arg("stream"), py::arg("allocator"), py::arg("total"),
           "Enqueue the fused pass (and the total) on `stream`; returns a CudaResult.")
      .def_property_readonly("tensors", &CudaPlan::tensors)
      .def_property_readonly("result_bytes", &CudaPlan::result_bytes);
  m.def("fetch_many", &fetch_many, py::arg("results"),
        "States and non-empty log-histogram buckets of many CudaResults (same plan, totals "
        "launched): (f, n, nnz, buckets, counts, flows). Waits only for each result's own work.");
  m.def("describe_cuda", &describe_cuda, py::arg("capsules"), py::arg("names"), py::arg("device"),
        py::arg("stream"), py::arg("hist_kind"), py::arg("bins"), py::arg("mantissa_bits"),
        py::arg("edge_mode"), py::arg("lo"), py::arg("hi"), py::arg("edges"), py::arg("allocator"),
        "Enqueue the fused moments/histogram pass over CUDA tensors (DLPack capsules) on `stream` "
        "and return a CudaResult. edge_mode: 1 range (lo, hi), 2 each tensor's data range, "
        "3 explicit `edges` (P x (bins + 1) float64). `allocator(nbytes)` returns an object with "
        "data_ptr() (e.g. a torch.uint8 CUDA tensor), or None for cudaMallocAsync.");
  m.def("pairwise_distances_cuda", &pairwise_distances_cuda, py::arg("counts"), py::arg("centres"),
        py::arg("metric"), py::arg("device") = 0,
        "pairwise_distances computed on a GPU (synchronous): K x K distances between the rows of "
        "a host (K, B) int64 count matrix. Metric codes: 0 wasserstein, 1 ks, 2 js, 3 hellinger, "
        "4 tv.");
  m.def("cuda_chunk_length", &cu::chunk_length, py::arg("numel"),
        py::arg("uniform_histogram") = false,
        "Values per work item (one block of the fused kernel) for a CUDA tensor of `numel` values "
        "under this process's work split (PWS_CUDA_CHUNK / PWS_CUDA_BLOCKS, read once), in a "
        "request without (default) or with a uniform histogram. Host only.");
  m.def("cuda_last_launch_ns", &last_launch_ns,
        "Host time in ns of each phase of the calling thread's last CUDA launch (a CudaPlan "
        "launch or describe_cuda), in CUDA_LAUNCH_PHASES order, or None (private diagnostic).");
  py::tuple phases(kLaunchPhases.size());
  for (size_t i = 0; i < kLaunchPhases.size(); ++i) phases[i] = py::str(kLaunchPhases[i]);
  m.attr("CUDA_LAUNCH_PHASES") = phases;
  m.attr("CUDA_CHUNK") = cu::kChunk;
  m.def("cuda_plan_device_tables", &cu::plan_device_tables,
        "The plans' default for device_table (PWS_CUDA_PLAN_TABLE, read once; private).");
  m.def("cuda_small_tables", &cu::small_tables,
        "Whether a moments-only launch over at most CUDA_SMALL_BATCH tensors carries the small "
        "launch table (PWS_CUDA_SMALL_TABLE, read once; private, for tests and benchmarks).");
  m.attr("CUDA_SMALL_BATCH") = cu::kSmallBatch;
  m.attr("CUDA_BIG_CHUNK") = cu::kBigChunk;
  m.attr("CUDA_MIN_TENSOR_CHUNKS") = cu::kMinTensorChunks;
}

}  // namespace pws::bind
