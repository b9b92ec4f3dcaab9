// Host emulation of the part of CUDA that pyweightstat's kernels use, for tests on machines
// without a GPU (tests only; never part of the extension).
//
// The .cu files are compiled as C++ with -DPWS_CUDA_EMULATION and this folder first on the include
// path (its cuda_runtime.h / cuda_fp16.h replace the toolkit's). Every CUDA thread of a block runs
// as a cooperative fiber (ucontext) on one OS thread; blocks run one after another. Fibers switch
// at __syncthreads, at every warp collective (shuffles, ballot, match) and, pseudo-randomly, at
// atomics, so barriers and warp exchanges have their CUDA meaning:
//   * __syncthreads waits for every thread of the block that has not exited;
//   * a warp collective needs all 32 lanes (the kernels only use full masks: anything else, or a
//     lane that exited, is reported as an error);
//   * a barrier that can never be passed (a divergent __syncthreads, a collective a lane skips)
//     aborts with a message instead of hanging.
// Device memory is host memory: cudaMalloc* fills new buffers and every block's dynamic shared
// memory with a garbage pattern, so reading what a kernel never wrote shows up in the results.
// Launches check the dynamic shared memory against the kernel's opt-in attribute and the device's
// limit (PWS_EMU_SMEM_OPTIN bytes, default an H100's 232448) and fail as CUDA would.
//
// What it cannot show: timing, memory-model effects between blocks running at once, static
// __shared__ arrays left uninitialised (they keep the previous block's values), and float
// rounding of the GPU's fused multiply-adds (host arithmetic is plain IEEE without contraction).
#pragma once
#include <math.h>
#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
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
};

// One block's fibers and their scheduler.
struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_bar;
  int live = 0;
  int cur = -1;
  ucontext_t sched;
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
inline cudaError_t g_last_error = cudaSuccess;
inline uint64_t g_rng = 0x9E3779B97F4A7C15ull;

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "pws_emu: %s (block %u, thread %u)\n", what, g_block_idx.x, g_thread_idx.x);
  std::fflush(stderr);
  std::abort();
}

inline void set_error(cudaError_t e) {
  if (g_last_error == cudaSuccess) g_last_error = e;
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
template <class R, class Read>
inline R collective(unsigned mask, uint64_t mine, Read read) {
  check_full_mask(mask);
  Warp& w = this_warp();
  w.slot[g_thread_idx.x % 32] = mine;
  arrive(w.bar, 32);
  const R r = read(w.slot, static_cast<int>(g_thread_idx.x % 32));
  arrive(w.bar, 32);
  return r;
}

inline void fiber_entry() {
  Block& b = *current_block();
  (*b.body)();
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
  static std::map<const void*, size_t> m;
  return m;
}

inline std::vector<char>& stacks() {
  static std::vector<char> s;
  return s;
}

// Run body() as every thread of every block of the grid.
inline void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()>& body) {
  const size_t threads = static_cast<size_t>(block.x) * block.y * block.z;
  if (block.y != 1 || block.z != 1 || grid.z != 1)
    die("only 1-D blocks and 2-D grids are emulated");
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0) {
    set_error(cudaErrorInvalidValue);
    return;
  }
  const auto it = smem_attributes().find(kernel);
  const size_t allowed = it != smem_attributes().end() ? it->second : kDefaultSmem;
  if (smem > allowed || smem > smem_optin()) {  // cudaErrorInvalidValue, as on the device
    set_error(cudaErrorInvalidValue);
    return;
  }
  if (stacks().size() < threads * kStackBytes) stacks().resize(threads * kStackBytes);
  std::vector<unsigned char> dyn(smem > 0 ? smem : 1);
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
        make_fiber(f, stacks().data() + t * kStackBytes, &b.sched);
      }
      while (b.live > 0) {
        bool ran = false;
        for (size_t t = 0; t < threads; ++t) {
          if (b.fibers[t].done || b.fibers[t].blocked) continue;
          ran = true;
          resume(b, t);
        }
        if (!ran) {
          g_thread_idx = uint3{0, 0, 0};
          die("deadlock: every live thread waits at a barrier or warp collective that cannot open");
        }
      }
      b.cur = -1;
    }
  }
  current_block() = nullptr;
}

template <class... P>
struct Launch {
  dim3 grid, block;
  size_t smem;
  void (*kernel)(P...);
  template <class... A>
  void operator()(A&&... args) const {
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    const std::function<void()> body = [&] { std::apply(kernel, params); };
    run_grid(reinterpret_cast<const void*>(kernel), grid, block, smem, body);
  }
};

template <class... P>
inline Launch<P...> launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*kernel)(P...)) {
  return Launch<P...>{grid, block, smem, kernel};
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
  return pws_emu::collective<T>(mask, pws_emu::to_slot(v), [src](const uint64_t* s, int) {
    return pws_emu::from_slot<T>(s[src & 31]);
  });
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) pws_emu::die("__shfl_down_sync with a width other than 32");
  return pws_emu::collective<T>(mask, pws_emu::to_slot(v), [delta](const uint64_t* s, int lane) {
    const unsigned src = static_cast<unsigned>(lane) + delta;
    return pws_emu::from_slot<T>(s[src < 32 ? src : static_cast<unsigned>(lane)]);
  });
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) pws_emu::die("__shfl_xor_sync with a width other than 32");
  return pws_emu::collective<T>(mask, pws_emu::to_slot(v),
                                [lane_mask](const uint64_t* s, int lane) {
                                  return pws_emu::from_slot<T>(s[(lane ^ lane_mask) & 31]);
                                });
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  return pws_emu::collective<unsigned>(mask, pred != 0 ? 1u : 0u, [](const uint64_t* s, int) {
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= (s[l] != 0 ? 1u : 0u) << l;
    return r;
  });
}

template <class T>
inline unsigned __match_any_sync(unsigned mask, T v) {
  return pws_emu::collective<unsigned>(mask, pws_emu::to_slot(v), [](const uint64_t* s, int lane) {
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= (s[l] == s[lane] ? 1u : 0u) << l;
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
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
  *v = static_cast<int>(pws_emu::smem_optin());
  return cudaSuccess;
}
template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > pws_emu::smem_optin()) {
    return cudaErrorInvalidValue;
  }
  pws_emu::smem_attributes()[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
  return cudaSuccess;
}
// Exactly `bytes` (256-byte aligned), so a sanitizer build reports accesses past the end.
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (posix_memalign(p, 256, bytes > 0 ? bytes : 1) != 0) return cudaErrorMemoryAllocation;
  std::memset(*p, pws_emu::kGarbage, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  return cudaMalloc(p, bytes);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
  *p = std::malloc(bytes > 0 ? bytes : 1);
  return *p != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                                     size_t width, size_t height, cudaMemcpyKind, cudaStream_t) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
  for (size_t r = 0; r < height; ++r) {
    std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch,
                width);
  }
  return cudaSuccess;
}
// Work runs when it is enqueued: streams and events have nothing to wait for.
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* s) {
  *s = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  static int token;
  *s = reinterpret_cast<cudaStream_t>(&token);
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  static int token;
  *e = reinterpret_cast<cudaEvent_t>(&token);
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
