// Host emulation of the part of CUDA that pyweightstat's kernels use, for tests on machines
// without a GPU (tests only; never part of the extension).
//
// The .cu files are compiled as C++ with -DPWS_CUDA_EMULATION and this folder first on the include
// path (its cuda_runtime.h / cuda_fp16.h replace the toolkit's); compile them with
// -ffp-contract=off (no fused multiply-adds the device code did not ask for) and
// -fno-strict-aliasing (the kernels read byte buffers as wider types).
//
// Threads. Every CUDA thread of a block runs as a cooperative fiber (ucontext, its own mmap'ed
// stack behind a guard page) on one OS thread; blocks run one after another. Fibers switch at
// __syncthreads, at every warp collective (shuffles, ballot, match) and, pseudo-randomly
// (PWS_EMU_SEED, PWS_EMU_YIELD_EVERY), at atomics. PWS_EMU_SCHEDULE picks which runnable
// thread goes next, all orders CUDA allows: "warp" (default: the lowest warp with a runnable lane
// runs until all its lanes wait, so a missing __syncthreads between two phases of the block
// shows up), "warp-reverse" (the same from the highest warp), "thread" (round robin by thread).
//   * __syncthreads waits for every thread of the block that has not exited;
//   * a warp collective needs all 32 lanes at the same kind of collective (the kernels only use
//     full masks: anything else, a lane that exited, or lanes meeting at different kinds of
//     collective is reported as an error);
//   * a barrier that can never be passed aborts with a message instead of hanging.
//
// Streams. Work is queued per stream (FIFO) and runs only when the host waits for it:
// cudaStreamSynchronize, cudaEventSynchronize (the recording stream up to the event),
// cudaDeviceSynchronize, and the synchronous calls (cudaMemcpy, cudaFree, cudaFreeHost). As on a
// GPU, a copy to pageable host memory waits for its stream and a copy from pageable host memory
// takes the source at once; copies to and from cudaHostAlloc memory are queued. So a read of
// results that forgets to wait for their work reads the garbage below, not the results.
//
// Memory. Device memory is host memory. cudaMalloc*, cudaHostAlloc and every block's dynamic
// shared memory are filled with a garbage pattern and sized to the byte, so reading what was
// never written shows up in the results, and a sanitizer build reports overruns. Launches check
// the grid, the block and the dynamic shared memory against the kernel's opt-in attribute and the
// device's limit (PWS_EMU_SMEM_OPTIN bytes, default an H100's 232448) and fail as CUDA would.
// PWS_EMU_TRACE=path appends one line per launch (grid, block, dynamic shared memory, the
// kernel's attribute) for tests that check which path a launch took, and one line per call of
// the runtime API that a GPU's driver would see ("call cudaMemsetAsync"; cudaGetDevice and
// cudaGetLastError, reads of the runtime's thread-local state, and the attribute queries are not
// listed), for tests and benchmarks that count the host's CUDA
// calls on a hot path. PWS_EMU_CALL_US=N makes each of those calls and launches take N
// microseconds more (a sleep), standing in for a driver's cost: tests of what the calling
// thread's clock or another thread does meanwhile.
//
// What it cannot show: timing, memory-model effects between blocks running at once, static
// __shared__ arrays left uninitialised (they keep the previous block's values), the GPU's own
// float rounding where the device code fuses operations, and ordering between streams other than
// through events. One global lock serialises every runtime call.
#pragma once
#include <math.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------- vector types
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};

// ---------------------------------------------------------------- runtime types
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaDeviceAttr : int { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaStreamCaptureStatus : int {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
};
enum cudaStreamCaptureMode : int {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
struct CUstream_st;
struct CUevent_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
constexpr unsigned cudaEventDisableTiming = 2;
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaHostAllocDefault = 0;

namespace pws_emu {

constexpr size_t kDefaultSmemOptin = 232448;  // sm_90: 227 KB
constexpr size_t kDefaultSmem = 48 * 1024;    // without the opt-in
constexpr size_t kStackBytes = 256 * 1024;    // per fiber (kernel parameters are copied there)
constexpr unsigned char kGarbage = 0xA5;

struct Fiber {
  ucontext_t ctx;
  bool done = false;
  bool blocked = false;
  unsigned tid = 0;
};

struct Barrier {
  int count = 0;
  std::vector<int> waiters;
};

struct Warp {
  uint64_t slot[32];
  Barrier bar;
  int op = 0;  // the kind of collective the lanes that arrived so far are at (0: none)
};

// One block's fibers and their scheduler.
struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_bar;
  int live = 0;
  int cur = -1;
  ucontext_t sched{};
  const std::function<void()>* body = nullptr;
  unsigned char* dyn_smem = nullptr;
};

inline Block*& current_block() {
  static Block* b = nullptr;
  return b;
}

inline uint3 g_thread_idx{0, 0, 0};
inline uint3 g_block_idx{0, 0, 0};
inline dim3 g_block_dim{1, 1, 1};
inline dim3 g_grid_dim{1, 1, 1};
inline thread_local cudaError_t g_last_error = cudaSuccess;
inline uint64_t g_rng = 0x9E3779B97F4A7C15ull;

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "pws_emu: %s (block %u, thread %u)\n", what, g_block_idx.x, g_thread_idx.x);
  std::fflush(stderr);
  std::abort();
}

inline void set_error(cudaError_t e) { g_last_error = e; }  // the latest error, per host thread

// The emulator's global state is never destroyed: the extension's own static objects (its pinned
// staging buffer) call the runtime while the process exits.
inline std::recursive_mutex& runtime_mutex() {
  static auto* m = new std::recursive_mutex;
  return *m;
}

inline size_t env_size(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) : fallback;
}

inline size_t smem_optin() { return env_size("PWS_EMU_SMEM_OPTIN", kDefaultSmemOptin); }

// Switch from the running fiber back to the scheduler.
inline void yield_now() {
  Block* b = current_block();
  if (b == nullptr || b->cur < 0) die("yield outside a kernel");
  Fiber& f = b->fibers[static_cast<size_t>(b->cur)];
  swapcontext(&f.ctx, &b->sched);
}

// Every 1 in PWS_EMU_YIELD_EVERY atomics (default 16; 0: never), chosen by a generator seeded
// from PWS_EMU_SEED, lets other threads run first.
inline void maybe_yield() {
  static const size_t every = env_size("PWS_EMU_YIELD_EVERY", 16);
  static const bool seeded = [] {  // PWS_EMU_SEED: another interleaving of the same launches
    g_rng ^= env_size("PWS_EMU_SEED", 0) * 0xD1B54A32D192ED03ull;
    return true;
  }();
  if (every == 0 || !seeded || current_block() == nullptr) return;
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  if (g_rng % every == 0) yield_now();
}

inline void release(Block& b, Barrier& bar) {
  for (int w : bar.waiters) b.fibers[static_cast<size_t>(w)].blocked = false;
  bar.waiters.clear();
  bar.count = 0;
}

// Arrive at `bar`, which opens when `expected` threads have arrived.
inline void arrive(Barrier& bar, int expected) {
  Block& b = *current_block();
  if (++bar.count >= expected) {
    release(b, bar);
    return;
  }
  bar.waiters.push_back(b.cur);
  b.fibers[static_cast<size_t>(b.cur)].blocked = true;
  yield_now();
}

inline Warp& this_warp() {
  Block& b = *current_block();
  return b.warps[g_thread_idx.x / 32];
}

inline void check_full_mask(unsigned mask) {
  if (mask != 0xffffffffu) die("warp collective with a partial mask (not emulated)");
  Block& b = *current_block();
  const size_t w0 = (g_thread_idx.x / 32) * 32;
  for (size_t l = w0; l < w0 + 32; ++l) {
    if (l >= b.fibers.size() || b.fibers[l].done) die("warp collective after a lane exited");
  }
}

template <class T>
inline uint64_t to_slot(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a wide type");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <class T>
inline T from_slot(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// Deposit this lane's value, wait for the warp, compute the result with `read` (it sees every
// lane's slot), wait again so no lane overwrites a slot another lane still has to read.
enum Op : int { kShfl = 1, kShflDown, kShflXor, kBallot, kMatchAny, kReduce };

template <class R, class Read>
inline R collective(int op, unsigned mask, uint64_t mine, Read read) {
  check_full_mask(mask);
  Warp& w = this_warp();
  if (w.bar.count == 0) w.op = op;
  if (w.op != op) die("lanes of a warp meet at different kinds of warp collective");
  w.slot[g_thread_idx.x % 32] = mine;
  arrive(w.bar, 32);
  const R r = read(w.slot, static_cast<int>(g_thread_idx.x % 32));
  arrive(w.bar, 32);
  return r;
}

inline void fiber_entry() {
  Block& b = *current_block();
  try {
    (*b.body)();
  } catch (...) {  // would otherwise unwind through the makecontext frame
    die("an exception escaped a kernel");
  }
  Fiber& f = b.fibers[static_cast<size_t>(b.cur)];
  f.done = true;
  --b.live;
  // threads that exited no longer count at __syncthreads
  if (b.block_bar.count > 0 && b.block_bar.count >= b.live) release(b, b.block_bar);
  // returning resumes uc_link: the scheduler
}

// Context switches live in functions of their own: getcontext returns twice, and locals of a
// caller could otherwise be clobbered.
__attribute__((noinline)) inline void make_fiber(Fiber& f, char* stack, ucontext_t* link) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = link;
  makecontext(&f.ctx, fiber_entry, 0);
}

__attribute__((noinline)) inline void resume(Block& b, size_t t) {
  Fiber& f = b.fibers[t];
  b.cur = static_cast<int>(t);
  g_thread_idx = uint3{f.tid, 0, 0};
  swapcontext(&b.sched, &f.ctx);
}

inline std::map<const void*, size_t>& smem_attributes() {
  static auto* m = new std::map<const void*, size_t>;
  return *m;
}

// Fiber stacks, each behind a PROT_NONE guard page (an overflow faults instead of writing into
// the neighbouring fiber's stack). Grown on demand, never freed.
struct Stacks {
  char* base = nullptr;
  size_t count = 0;
  static constexpr size_t kGuard = 4096;
  char* get(size_t t) {
    if (t >= count) grow(t + 1);
    return base + t * (kGuard + kStackBytes) + kGuard;
  }
  void grow(size_t n) {
    n = n < 1024 ? 1024 : n;
    const size_t bytes = n * (kGuard + kStackBytes);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("cannot map fiber stacks");
    for (size_t i = 0; i < n; ++i) {
      if (mprotect(static_cast<char*>(p) + i * (kGuard + kStackBytes), kGuard, PROT_NONE) != 0)
        die("cannot protect a fiber stack guard page");
    }
    base = static_cast<char*>(p);  // the old mapping is leaked: a fiber might still use it
    count = n;
  }
};

inline Stacks& stacks() {
  static Stacks s;
  return s;
}

enum class Schedule { kWarp, kWarpReverse, kThread };

inline Schedule schedule() {
  const char* v = std::getenv("PWS_EMU_SCHEDULE");
  const std::string s = v != nullptr ? v : "warp";
  if (s == "warp") return Schedule::kWarp;
  if (s == "warp-reverse") return Schedule::kWarpReverse;
  if (s == "thread") return Schedule::kThread;
  die("PWS_EMU_SCHEDULE must be warp, warp-reverse or thread");
}

inline bool runnable(const Block& b, size_t t) { return !b.fibers[t].done && !b.fibers[t].blocked; }

// Run the block's threads until all have exited, in the order `how` gives.
inline void run_block(Block& b, Schedule how) {
  const size_t threads = b.fibers.size();
  const size_t nw = b.warps.size();
  while (b.live > 0) {
    bool ran = false;
    if (how == Schedule::kThread) {
      for (size_t t = 0; t < threads; ++t) {
        if (!runnable(b, t)) continue;
        ran = true;
        resume(b, t);
      }
    } else {
      // the first warp (in order) with a runnable lane runs until none of its lanes can
      for (size_t k = 0; k < nw && !ran; ++k) {
        const size_t w = how == Schedule::kWarp ? k : nw - 1 - k;
        for (bool any = true; any;) {
          any = false;
          for (size_t t = w * 32; t < threads && t < w * 32 + 32; ++t) {
            if (!runnable(b, t)) continue;
            any = ran = true;
            resume(b, t);
          }
        }
      }
    }
    if (!ran) {
      g_thread_idx = uint3{0, 0, 0};
      die("deadlock: every live thread waits at a barrier or warp collective that cannot open");
    }
  }
}

// PWS_EMU_CALL_US: the stand-in for a driver's time in a runtime call or launch.
inline void driver_delay() {
  const size_t us = env_size("PWS_EMU_CALL_US", 0);
  if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

// One "call NAME" line in the PWS_EMU_TRACE file (if set): a runtime call a GPU would make.
inline void trace_call(const char* name) {
  driver_delay();
  const char* path = std::getenv("PWS_EMU_TRACE");
  if (path == nullptr || *path == '\0') return;
  FILE* f = std::fopen(path, "a");
  if (f == nullptr) return;
  std::fprintf(f, "call %s\n", name);
  std::fclose(f);
}

inline void trace_launch(dim3 grid, dim3 block, size_t smem, size_t allowed) {
  driver_delay();
  const char* path = std::getenv("PWS_EMU_TRACE");
  if (path == nullptr || *path == '\0') return;
  FILE* f = std::fopen(path, "a");
  if (f == nullptr) return;
  std::fprintf(f, "launch grid=%u,%u block=%u smem=%zu attr=%zu\n", grid.x, grid.y, block.x, smem,
               allowed);
  std::fclose(f);
}

// Whether a launch of `kernel` with this configuration may start (else the CUDA error).
inline cudaError_t check_launch(const void* kernel, dim3 grid, dim3 block, size_t smem) {
  const size_t threads = static_cast<size_t>(block.x) * block.y * block.z;
  if (block.y != 1 || block.z != 1 || grid.z != 1)
    die("only 1-D blocks and 2-D grids are emulated");
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.y > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  const auto it = smem_attributes().find(kernel);
  const size_t allowed = it != smem_attributes().end() ? it->second : kDefaultSmem;
  if (smem > allowed || smem > smem_optin()) return cudaErrorInvalidValue;
  trace_launch(grid, block, smem, allowed);
  return cudaSuccess;
}

// Run body() as every thread of every block of the grid.
inline void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  const size_t threads = block.x;
  for (size_t t = 0; t < threads; ++t) stacks().get(t);
  std::vector<unsigned char> dyn(smem > 0 ? smem : 1);
  const Schedule how = schedule();
  Block b;
  b.body = &body;
  b.dyn_smem = dyn.data();
  current_block() = &b;
  g_grid_dim = grid;
  g_block_dim = block;
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      g_block_idx = uint3{bx, by, 0};
      std::memset(dyn.data(), kGarbage, dyn.size());
      b.fibers.assign(threads, Fiber{});
      b.warps.assign((threads + 31) / 32, Warp{});
      b.block_bar = Barrier{};
      b.live = static_cast<int>(threads);
      for (size_t t = 0; t < threads; ++t) {
        Fiber& f = b.fibers[t];
        f.tid = static_cast<unsigned>(t);
        make_fiber(f, stacks().get(t), &b.sched);
      }
      run_block(b, how);
      b.cur = -1;
    }
  }
  current_block() = nullptr;
}

// ---------------------------------------------------------------- streams
using Work = std::function<void()>;

struct StreamQueue {
  std::deque<Work> q;
};

// An event completes when the stream reaches its latest record (an earlier record of the same
// event reached later does not complete it, as in CUDA).
struct EventState {
  uint64_t recorded = 0;   // records so far
  uint64_t completed = 0;  // the latest record the stream has reached
  StreamQueue* stream = nullptr;
  bool done() const { return completed == recorded; }
};

inline StreamQueue& legacy_stream() {
  static auto* s = new StreamQueue;
  return *s;
}

inline std::set<StreamQueue*>& streams() {
  static auto* s = new std::set<StreamQueue*>{&legacy_stream()};
  return *s;
}

inline StreamQueue& queue_of(cudaStream_t s) {
  return s == nullptr ? legacy_stream() : *reinterpret_cast<StreamQueue*>(s);
}

inline void enqueue(cudaStream_t s, Work w) {
  std::lock_guard<std::recursive_mutex> lock(runtime_mutex());
  queue_of(s).q.push_back(std::move(w));
}

inline bool run_one(StreamQueue& s) {
  if (s.q.empty()) return false;
  Work w = std::move(s.q.front());
  s.q.pop_front();
  w();
  return true;
}

inline void drain(StreamQueue& s) {
  std::lock_guard<std::recursive_mutex> lock(runtime_mutex());
  while (run_one(s)) {
  }
}

inline void drain_all() {
  std::lock_guard<std::recursive_mutex> lock(runtime_mutex());
  for (bool any = true; any;) {
    any = false;
    for (StreamQueue* s : streams()) any = run_one(*s) || any;
  }
}

// cudaHostAlloc blocks: start -> size.
inline std::map<const char*, size_t>& pinned() {
  static auto* p = new std::map<const char*, size_t>;
  return *p;
}

inline bool is_pinned(const void* ptr) {
  std::lock_guard<std::recursive_mutex> lock(runtime_mutex());
  const char* c = static_cast<const char*>(ptr);
  auto it = pinned().upper_bound(c);
  if (it == pinned().begin()) return false;
  --it;
  return c < it->first + (it->second > 0 ? it->second : 1);
}

template <class... P>
struct Launch {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  void (*kernel)(P...);
  template <class... A>
  void operator()(A&&... args) const {
    const cudaError_t e = check_launch(reinterpret_cast<const void*>(kernel), grid, block, smem);
    if (e != cudaSuccess) {
      set_error(e);
      return;
    }
    auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
    enqueue(stream, [params, k = kernel, g = grid, b = block, sm = smem] {
      const std::function<void()> body = [&] { std::apply(k, *params); };
      run_grid(g, b, sm, body);
    });
  }
};

template <class... P>
inline Launch<P...> launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                           void (*kernel)(P...)) {
  return Launch<P...>{grid, block, smem, stream, kernel};
}

template <class T>
inline T* dynamic_shared() {
  Block* b = current_block();
  if (b == nullptr) die("dynamic shared memory outside a kernel");
  return reinterpret_cast<T*>(b->dyn_smem);
}

}  // namespace pws_emu

// ---------------------------------------------------------------- CUDA C++ keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __grid_constant__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)
#define threadIdx (::pws_emu::g_thread_idx)
#define blockIdx (::pws_emu::g_block_idx)
#define blockDim (::pws_emu::g_block_dim)
#define gridDim (::pws_emu::g_grid_dim)

// ---------------------------------------------------------------- device functions
inline void __syncthreads() {
  pws_emu::Block& b = *pws_emu::current_block();
  pws_emu::arrive(b.block_bar, b.live);
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  if (width != 32) pws_emu::die("__shfl_sync with a width other than 32");
  return pws_emu::collective<T>(
      pws_emu::kShfl, mask, pws_emu::to_slot(v),
      [src](const uint64_t* s, int) { return pws_emu::from_slot<T>(s[src & 31]); });
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) pws_emu::die("__shfl_down_sync with a width other than 32");
  return pws_emu::collective<T>(
      pws_emu::kShflDown, mask, pws_emu::to_slot(v), [delta](const uint64_t* s, int lane) {
        const unsigned src = static_cast<unsigned>(lane) + delta;
        return pws_emu::from_slot<T>(s[src < 32 ? src : static_cast<unsigned>(lane)]);
      });
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) pws_emu::die("__shfl_xor_sync with a width other than 32");
  return pws_emu::collective<T>(
      pws_emu::kShflXor, mask, pws_emu::to_slot(v), [lane_mask](const uint64_t* s, int lane) {
        const int src = lane ^ lane_mask;  // outside the warp: own
        return pws_emu::from_slot<T>(s[src >= 0 && src < 32 ? src : lane]);
      });
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  return pws_emu::collective<unsigned>(pws_emu::kBallot, mask, pred != 0 ? 1u : 0u,
                                       [](const uint64_t* s, int) {
                                         unsigned r = 0;
                                         for (int l = 0; l < 32; ++l)
                                           r |= (s[l] != 0 ? 1u : 0u) << l;
                                         return r;
                                       });
}

// __reduce_add_sync / __reduce_min_sync / __reduce_max_sync (REDUX, sm_80): every lane gets the
// sum (minimum, maximum) of the warp's values (collective() accepts only the full mask).
template <class T, class F>
inline T pws_emu_reduce(unsigned mask, T v, F f) {
  return pws_emu::collective<T>(pws_emu::kReduce, mask, pws_emu::to_slot(v),
                                [f](const uint64_t* s, int) {
                                  T r = pws_emu::from_slot<T>(s[0]);
                                  for (int l = 1; l < 32; ++l)
                                    r = f(r, pws_emu::from_slot<T>(s[l]));
                                  return r;
                                });
}
inline int __reduce_add_sync(unsigned mask, int v) {
  // wraps modulo 2^32, as the instruction does
  return pws_emu_reduce<int>(mask, v, [](int a, int b) {
    return static_cast<int>(static_cast<unsigned>(a) + static_cast<unsigned>(b));
  });
}
inline int __reduce_min_sync(unsigned mask, int v) {
  return pws_emu_reduce<int>(mask, v, [](int a, int b) { return b < a ? b : a; });
}
inline int __reduce_max_sync(unsigned mask, int v) {
  return pws_emu_reduce<int>(mask, v, [](int a, int b) { return b > a ? b : a; });
}

template <class T>
inline unsigned __match_any_sync(unsigned mask, T v) {
  return pws_emu::collective<unsigned>(pws_emu::kMatchAny, mask, pws_emu::to_slot(v),
                                       [](const uint64_t* s, int lane) {
                                         unsigned r = 0;
                                         for (int l = 0; l < 32; ++l)
                                           r |= (s[l] == s[lane] ? 1u : 0u) << l;
                                         return r;
                                       });
}

template <class T>
inline T atomicAdd(T* p, T v) {
  pws_emu::maybe_yield();
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
  pws_emu::maybe_yield();
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  pws_emu::maybe_yield();
  const T old = *p;
  if (v < old) *p = v;
  return old;
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}

// Host memory is coherent and the fibers interleave only where the emulator switches, so a fence
// orders nothing more; like an atomic, it may let the block's other threads run first.
inline void __threadfence() { ::pws_emu::maybe_yield(); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }
inline unsigned __float_as_uint(float v) {
  return pws_emu::from_slot<unsigned>(pws_emu::to_slot(v));
}
inline float __uint_as_float(unsigned v) { return pws_emu::from_slot<float>(pws_emu::to_slot(v)); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

template <class T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
inline T max(T a, T b) {
  return a < b ? b : a;
}

// ---------------------------------------------------------------- runtime API
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    default:
      return "cudaErrorLaunchFailure";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = pws_emu::g_last_error;
  pws_emu::g_last_error = cudaSuccess;
  return e;
}
namespace pws_emu {
inline cudaError_t fail(cudaError_t e) {  // a failing runtime call also sets the last error
  set_error(e);
  return e;
}
}  // namespace pws_emu
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) {
  pws_emu::trace_call("cudaSetDevice");
  return d == 0 ? cudaSuccess : pws_emu::fail(cudaErrorInvalidValue);
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return pws_emu::fail(cudaErrorInvalidValue);
  *v = static_cast<int>(pws_emu::smem_optin());
  return cudaSuccess;
}
template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > pws_emu::smem_optin()) {
    return pws_emu::fail(cudaErrorInvalidValue);
  }
  std::lock_guard<std::recursive_mutex> lock(pws_emu::runtime_mutex());
  pws_emu::smem_attributes()[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
  return cudaSuccess;
}
namespace pws_emu {
// Exactly `bytes` (256-byte aligned), so a sanitizer build reports accesses past the end.
inline cudaError_t device_alloc(void** p, size_t bytes) {
  if (posix_memalign(p, 256, bytes > 0 ? bytes : 1) != 0) return fail(cudaErrorMemoryAllocation);
  std::memset(*p, kGarbage, bytes);
  return cudaSuccess;
}
}  // namespace pws_emu
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  pws_emu::trace_call("cudaMalloc");
  return pws_emu::device_alloc(p, bytes);
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  pws_emu::trace_call("cudaMallocAsync");
  return pws_emu::device_alloc(p, bytes);
}
inline cudaError_t cudaFree(void* p) {  // synchronous, as on a GPU
  pws_emu::trace_call("cudaFree");
  pws_emu::drain_all();
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {  // after the stream's queued work
  pws_emu::trace_call("cudaFreeAsync");
  pws_emu::enqueue(s, [p] { std::free(p); });
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
  pws_emu::trace_call("cudaHostAlloc");
  *p = std::malloc(bytes > 0 ? bytes : 1);
  if (*p == nullptr) return pws_emu::fail(cudaErrorMemoryAllocation);
  std::memset(*p, pws_emu::kGarbage, bytes);
  std::lock_guard<std::recursive_mutex> lock(pws_emu::runtime_mutex());
  pws_emu::pinned()[static_cast<const char*>(*p)] = bytes;
  return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) {  // synchronous, as on a GPU
  pws_emu::trace_call("cudaFreeHost");
  pws_emu::drain_all();
  std::lock_guard<std::recursive_mutex> lock(pws_emu::runtime_mutex());
  pws_emu::pinned().erase(static_cast<const char*>(p));
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t s) {
  pws_emu::trace_call("cudaMemsetAsync");
  pws_emu::enqueue(s, [p, v, bytes] { std::memset(p, v, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  pws_emu::trace_call("cudaMemcpy");
  pws_emu::drain_all();  // synchronous: after all queued work
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
namespace pws_emu {
// A copy of `height` rows as a GPU would order it on stream s: from pageable host memory the
// source is taken at once; to pageable host memory the call waits for the stream; everything else
// is queued.
inline cudaError_t copy_rows(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                             size_t height, cudaMemcpyKind kind, cudaStream_t s) {
  if (height > 0 && (width > dpitch || width > spitch)) return fail(cudaErrorInvalidValue);
  auto rows = [dst, dpitch, width, height](const char* from, size_t pitch) {
    for (size_t r = 0; r < height; ++r) {
      std::memcpy(static_cast<char*>(dst) + r * dpitch, from + r * pitch, width);
    }
  };
  if (kind == cudaMemcpyHostToDevice && !is_pinned(src)) {
    auto staged = std::make_shared<std::vector<char>>(height * width);
    for (size_t r = 0; r < height; ++r) {
      std::memcpy(staged->data() + r * width, static_cast<const char*>(src) + r * spitch, width);
    }
    enqueue(s, [staged, rows, width] { rows(staged->data(), width); });
    return cudaSuccess;
  }
  if (kind == cudaMemcpyDeviceToHost && !is_pinned(dst)) {
    drain(queue_of(s));
    rows(static_cast<const char*>(src), spitch);
    return cudaSuccess;
  }
  enqueue(s, [rows, src, spitch] { rows(static_cast<const char*>(src), spitch); });
  return cudaSuccess;
}
}  // namespace pws_emu
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t s) {
  pws_emu::trace_call("cudaMemcpyAsync");
  return pws_emu::copy_rows(dst, bytes, src, bytes, bytes, 1, kind, s);
}
inline cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                                     size_t width, size_t height, cudaMemcpyKind kind,
                                     cudaStream_t s) {
  pws_emu::trace_call("cudaMemcpy2DAsync");
  return pws_emu::copy_rows(dst, dpitch, src, spitch, width, height, kind, s);
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  pws_emu::trace_call("cudaStreamSynchronize");
  pws_emu::drain(pws_emu::queue_of(s));
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
  pws_emu::trace_call("cudaDeviceSynchronize");
  pws_emu::drain_all();
  return cudaSuccess;
}
// The emulator never captures: each thread's mode is kept only to be swapped back, as in CUDA.
inline cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  pws_emu::trace_call("cudaThreadExchangeStreamCaptureMode");
  static thread_local cudaStreamCaptureMode current = cudaStreamCaptureModeGlobal;
  const cudaStreamCaptureMode old = current;
  current = *mode;
  *mode = old;
  return cudaSuccess;
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* s) {
  pws_emu::trace_call("cudaStreamIsCapturing");
  *s = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  pws_emu::trace_call("cudaStreamCreateWithFlags");
  auto* q = new pws_emu::StreamQueue;
  std::lock_guard<std::recursive_mutex> lock(pws_emu::runtime_mutex());
  pws_emu::streams().insert(q);
  *s = reinterpret_cast<cudaStream_t>(q);
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {  // its queued work still runs, first
  pws_emu::trace_call("cudaStreamDestroy");
  if (s == nullptr) return pws_emu::fail(cudaErrorInvalidValue);
  pws_emu::drain(pws_emu::queue_of(s));
  std::lock_guard<std::recursive_mutex> lock(pws_emu::runtime_mutex());
  pws_emu::streams().erase(&pws_emu::queue_of(s));
  delete &pws_emu::queue_of(s);
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  pws_emu::trace_call("cudaEventCreateWithFlags");
  *e = reinterpret_cast<cudaEvent_t>(
      new std::shared_ptr<pws_emu::EventState>(std::make_shared<pws_emu::EventState>()));
  return cudaSuccess;
}
namespace pws_emu {
inline std::shared_ptr<EventState>& event_state(cudaEvent_t e) {
  return *reinterpret_cast<std::shared_ptr<EventState>*>(e);
}
}  // namespace pws_emu
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  pws_emu::trace_call("cudaEventRecord");
  std::shared_ptr<pws_emu::EventState> st = pws_emu::event_state(e);
  std::lock_guard<std::recursive_mutex> lock(pws_emu::runtime_mutex());
  const uint64_t gen = ++st->recorded;
  st->stream = &pws_emu::queue_of(s);
  pws_emu::enqueue(s, [st, gen] {
    if (st->completed < gen) st->completed = gen;
  });
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  pws_emu::trace_call("cudaEventSynchronize");
  std::shared_ptr<pws_emu::EventState> st = pws_emu::event_state(e);
  std::lock_guard<std::recursive_mutex> lock(pws_emu::runtime_mutex());
  while (!st->done()) {
    if (!pws_emu::run_one(*st->stream)) pws_emu::die("an event that can never complete");
  }
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  pws_emu::trace_call("cudaEventDestroy");
  delete &pws_emu::event_state(e);
  return cudaSuccess;
}
